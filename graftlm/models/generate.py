"""One reply from a registered model with plain HF generate (used by `graft chat` before serving)."""

from __future__ import annotations

from graftlm.data.render import render_prompt
from graftlm.models.catalog import get_model
from graftlm.device import default_dtype, device


def load_hf(model_id: str):
    """(model, tokenizer) for a base model, or a base model with its PEFT adapter for a custom model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    m = get_model(model_id)
    base = get_model(m["parent"]) if m["kind"] == "custom" else m
    dev = device()
    weights_dir = m["path"] if m.get("adapter_type") == "full" else base["path"]
    tokenizer = AutoTokenizer.from_pretrained(weights_dir)
    model = AutoModelForCausalLM.from_pretrained(weights_dir, dtype=default_dtype(dev)).to(dev)
    if m["kind"] == "custom" and m.get("adapter_type") != "full":
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, m["path"])
    model.eval()
    torch.set_grad_enabled(False)
    return model, tokenizer


def chat_once(model_id: str, messages: list[dict], max_new_tokens: int = 128) -> str:
    import torch

    model, tokenizer = load_hf(model_id)
    ids = torch.tensor([render_prompt(tokenizer, messages)], device=model.device)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                         do_sample=False, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
