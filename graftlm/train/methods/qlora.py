"""QLoRA: LoRA over a frozen 4-bit NF4 base (bitsandbytes); CUDA only (check_runtime refuses elsewhere)."""

from __future__ import annotations

from graftlm.train.methods import save_adapter as save  # noqa: F401
from graftlm.train.methods.lora import lora_config


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
