"""What the console shows beyond the public API: a file's full validation report (optionally with token
statistics under a model's tokenizer), a model with its lineage, the fine-tuning form, a model as a zip."""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from pathlib import Path

from graftlm.files import service as files
from graftlm.config import get_settings
from graftlm.errors import GraftError
from graftlm.models.catalog import base_model_of, get_model, list_models
from graftlm.store import blobs
from graftlm.train.config import METHOD_FIELDS, FineTuneConfig, oci_defaults
from graftlm.train.methods import METHODS

# OpenAI's and Databricks' spellings of fields the form already has (the API accepts them; the form shows one)
ALIASES = ("n_epochs", "batch_size", "learning_rate_multiplier", "training_duration")

PUBLIC_MODEL_FIELDS = ("id", "kind", "family", "parent", "parameter_count", "context_length", "license",
                       "source", "sha256", "adapter_type", "lineage", "created_at")


def file_report(file_id: str, model: str | None = None) -> dict:
    """The stored validation report of a file; with `model`, validated again with its tokenizer and
    context length so the report carries token statistics."""
    record = files.get_file(file_id)
    report = files.get_file_record(file_id).report
    if model:
        from transformers import AutoTokenizer

        from graftlm.data.validate import validate_file

        base = base_model_of(model)
        stored = files.get_file_record(file_id)
        path = blobs.blob_path(get_settings().blobs_dir, stored.sha256)
        report = validate_file(path, tokenizer=AutoTokenizer.from_pretrained(base["path"]),
                               context_length=base["context_length"])
    return {"file": record, "report": report, "model": model}


def public_model(m: dict) -> dict:
    """A model without its server-side path."""
    return {k: m.get(k) for k in PUBLIC_MODEL_FIELDS}


def models() -> dict:
    return {"object": "list", "data": [public_model(m) for m in list_models()], "has_more": False}


def model_detail(model_id: str) -> dict:
    return public_model(get_model(model_id))


def finetune_form() -> dict:
    """The hyperparameter schema (the one API, CLI and YAML use), each method's OCI defaults (shown when
    `defaults` is "oci"), the fields only some methods read, and the alias fields the form leaves out."""
    return {"schema": FineTuneConfig.model_json_schema(), "aliases": list(ALIASES),
            "method_fields": {k: list(v) for k, v in METHOD_FIELDS.items()},
            "oci_defaults": {m: oci_defaults(m) for m in METHODS}}


def model_archive(model_id: str) -> tuple[Path, str]:
    """A custom model's files (its PEFT adapter, or full weights) zipped into a temporary file;
    returns (path, download name). The caller deletes the file."""
    from graftlm.models.export import export_model

    m = get_model(model_id)
    if m["kind"] != "custom":
        raise GraftError(f"{model_id} is a base model; only custom models are exported", param="model")
    name = model_id.replace(":", "_")
    with tempfile.TemporaryDirectory(prefix="graft-export-") as tmp:
        out = export_model(model_id, Path(tmp) / name)
        fd, zpath = tempfile.mkstemp(prefix="graft-export-", suffix=".zip")
        with open(fd, "wb") as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_DEFLATED) as zf:
            for p in sorted(out.rglob("*")):
                if p.is_file():
                    zf.write(p, f"{name}/{p.relative_to(out)}")
    return Path(zpath), f"{name}.zip"


def remove_file(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
