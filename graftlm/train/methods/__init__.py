"""One module per fine-tuning method; each says which weights train and how they are saved.

Every method module exposes ``load_kwargs(cfg) -> dict`` (extra ``from_pretrained`` arguments),
``prepare(model, cfg) -> model`` and ``save(model, out_dir, tokenizer=None)``.
"""

from __future__ import annotations

from importlib import import_module


def get_method(name: str):
    if name not in ("tfew", "lora", "qlora", "vanilla"):
        raise ValueError(f"unknown training method {name!r}")
    return import_module(f"graftlm.train.methods.{name}")


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameters, shared tensors counted once."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel() * (2 if p.__class__.__name__ == "Params4bit" else 1)  # 4-bit packs two values a byte
        total += n
        trainable += n if p.requires_grad else 0
    return trainable, total


def save_adapter(model, out_dir, tokenizer=None) -> None:
    """PEFT format (adapter_config.json + adapter_model.safetensors), loadable by PeftModel.from_pretrained."""
    model.save_pretrained(str(out_dir), safe_serialization=True)
