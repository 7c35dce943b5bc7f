"""Export a custom model: its PEFT adapter as is, or merged into the base weights as plain safetensors."""

from __future__ import annotations

import shutil
from pathlib import Path

from graftlm.errors import GraftError
from graftlm.models.catalog import get_model


def export_model(model_id: str, out_dir: str | Path, *, merged: bool = False) -> Path:
    m = get_model(model_id)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise GraftError(f"{out} exists and is not empty; choose a new directory", param="out")
    if m["kind"] != "custom":
        raise GraftError(f"{model_id} is a base model; its files are at {m['path']}", param="model")
    if not merged or m["adapter_type"] == "full":
        shutil.copytree(m["path"], out, dirs_exist_ok=True)
        return out
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = get_model(m["parent"])
    model = AutoModelForCausalLM.from_pretrained(base["path"], dtype=torch.float32)
    model = PeftModel.from_pretrained(model, m["path"]).merge_and_unload()
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(base["path"]).save_pretrained(out)
    return out
