"""Export a custom model: its PEFT adapter as is, or merged into the base weights as plain safetensors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from graftlm.errors import GraftError
from graftlm.models.card import model_card, portable_base_name
from graftlm.models.catalog import get_model


def _portable_adapter(out: Path, base: dict) -> None:
    """Point the adapter at the base model by a portable name, not this machine's path."""
    config = out / "adapter_config.json"
    if config.exists():
        data = json.loads(config.read_text())
        data["base_model_name_or_path"] = portable_base_name(base)
        config.write_text(json.dumps(data, indent=2))


def export_model(model_id: str, out_dir: str | Path, *, merged: bool = False) -> Path:
    m = get_model(model_id)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise GraftError(f"{out} exists and is not empty; choose a new directory", param="out")
    if m["kind"] != "custom":
        raise GraftError(f"{model_id} is a base model; its files are at {m['path']}", param="model")
    base = get_model(m["parent"])
    if not merged or m["adapter_type"] == "full":
        shutil.copytree(m["path"], out, dirs_exist_ok=True)
        _portable_adapter(out, base)
        (out / "README.md").write_text(model_card(m, base))  # replaces PEFT's blank template
        return out
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base["path"], dtype=torch.float32)
    model = PeftModel.from_pretrained(model, m["path"]).merge_and_unload()
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(base["path"]).save_pretrained(out)
    (out / "README.md").write_text(model_card(m, base))
    return out
