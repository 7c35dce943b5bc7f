"""LoRA: trainable low-rank A·B beside chosen linear layers (default: every linear of every decoder layer)."""

from __future__ import annotations

from graftlm.train.methods import no_load_kwargs as load_kwargs, runs_anywhere as check_runtime  # noqa: F401
from graftlm.train.methods import save_adapter as save  # noqa: F401

LLAMA_LINEAR_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

ADAPTER_TYPE = "lora"
FIELDS = ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules")
OCI_DEFAULTS = {"lora_r": 8, "lora_alpha": 8, "lora_dropout": 0.1}  # OCI's documented values
AUTO_DEFAULTS = {"lora_r": 16, "lora_dropout": 0.05}  # lora_alpha: 2 x lora_r (fill_defaults)
OCI_LEARNING_RATE = 2e-4
AUTO_BASE_LEARNING_RATE = 2e-3  # see graftlm.train.auto
EARLY_STOPPING_PATIENCE = 15
EARLY_STOPPING_THRESHOLD = 1e-4


def fill_defaults(cfg) -> None:
    """alpha 2 x r unless given; every linear layer of the decoder unless targets are named."""
    if cfg.lora_alpha is None:
        cfg.lora_alpha = 2 * cfg.lora_r
    if cfg.lora_target_modules is None:
        cfg.lora_target_modules = list(LLAMA_LINEAR_MODULES)


def lora_config(cfg):
    from peft import LoraConfig
    return LoraConfig(task_type="CAUSAL_LM", r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                      lora_dropout=cfg.lora_dropout, target_modules=list(cfg.lora_target_modules), bias="none")


def prepare(model, cfg):
    from peft import get_peft_model
    return get_peft_model(model, lora_config(cfg))
