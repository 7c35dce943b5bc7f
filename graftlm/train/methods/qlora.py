"""QLoRA: LoRA over a frozen 4-bit NF4 base (bitsandbytes); CUDA only (check_runtime refuses elsewhere)."""

from __future__ import annotations

from graftlm.errors import GraftError
from graftlm.train.methods import save_adapter as save  # noqa: F401
from graftlm.train.methods.lora import (  # noqa: F401 - LoRA's facts: the same adapter, another base
    ADAPTER_TYPE, AUTO_BASE_LEARNING_RATE, AUTO_DEFAULTS, EARLY_STOPPING_PATIENCE, EARLY_STOPPING_THRESHOLD, FIELDS,
    OCI_DEFAULTS, OCI_LEARNING_RATE, fill_defaults, lora_config)


def check_runtime() -> None:
    import torch
    if not torch.cuda.is_available():
        raise GraftError("training_method qlora needs a CUDA GPU (4-bit NF4 via bitsandbytes); "
                         "this machine has none: use lora instead", param="training_method")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise GraftError("training_method qlora needs the bitsandbytes package; install it or use lora",
                         param="training_method") from None


def load_kwargs(cfg) -> dict:
    import torch
    from transformers import BitsAndBytesConfig
    compute = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=compute)
    return {"quantization_config": quant, "device_map": {"": torch.cuda.current_device()}}


def prepare(model, cfg):
    from peft import get_peft_model, prepare_model_for_kbit_training
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    return get_peft_model(model, lora_config(cfg))
