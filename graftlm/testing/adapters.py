"""PEFT adapters with random, non-trivial weights for tests and benchmarks (made by PEFT itself)."""

from __future__ import annotations

from pathlib import Path

import torch


def make_peft_adapter(model_path: str | Path, out: str | Path, kind: str = "lora", r: int = 8, seed: int = 0,
                      target_modules: list[str] | str | None = None, scale: float = 0.5) -> Path:
    """Save a PEFT LoRA or IA3 adapter for ``model_path`` whose weights are random (LoRA B is not zero,
    (IA)³ vectors are not one), so serving it changes the outputs."""
    return make_peft_adapters(model_path, [out], kind, r, [seed], target_modules, scale)[0]


def make_peft_adapters(model_path: str | Path, outs: list, kind: str = "lora", r: int = 8,
                       seeds: list[int] | None = None, target_modules: list[str] | str | None = None,
                       scale: float = 0.5) -> list[Path]:
    """Several adapters of one kind from one PEFT model, re-randomized before each save."""
    from peft import IA3Config, LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    if kind == "lora":
        config = LoraConfig(task_type="CAUSAL_LM", r=r, lora_alpha=2 * r, lora_dropout=0.0,
                            target_modules=target_modules or "all-linear")
    elif kind == "ia3":
        config = IA3Config(task_type="CAUSAL_LM")
    else:
        raise ValueError(kind)
    peft_model = get_peft_model(model, config)
    for out, seed in zip(outs, seeds or range(len(outs))):
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "lora_B" in name or "lora_A" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * scale / p.shape[-1] ** 0.5)
                elif "ia3_l" in name:
                    p.copy_(1 + torch.randn(p.shape, generator=g) * scale)
        peft_model.save_pretrained(out)
    return [Path(o) for o in outs]


def build_test_llama(path: str | Path, seed: int = 0, weight_scale: float = 6.0, max_positions: int = 512) -> Path:
    """The tiny random Llama of ``graftlm.testing`` with weights scaled up so greedy outputs vary token to
    token (at the default init every prompt decodes to one repeated token, which would hide bugs)."""
    from safetensors.torch import load_file, save_file

    from graftlm.testing.models import build_tiny_llama

    path = build_tiny_llama(path, seed=seed, max_positions=max_positions)
    f = Path(path) / "model.safetensors"
    tensors = load_file(f)
    tensors = {k: v if "norm" in k else v * weight_scale for k, v in tensors.items()}
    save_file(tensors, f, metadata={"format": "pt"})
    return path
