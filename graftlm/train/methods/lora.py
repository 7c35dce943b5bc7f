"""LoRA: trainable low-rank A·B beside chosen linear layers (default: every linear of every decoder layer)."""

from __future__ import annotations

from graftlm.train.methods import save_adapter as save  # noqa: F401


def load_kwargs(cfg) -> dict:
    return {}


def lora_config(cfg):
    from peft import LoraConfig
    return LoraConfig(task_type="CAUSAL_LM", r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                      lora_dropout=cfg.lora_dropout, target_modules=list(cfg.lora_target_modules), bias="none")


def prepare(model, cfg):
    from peft import get_peft_model
    return get_peft_model(model, lora_config(cfg))
