"""An exported adapter's model card (README.md with its lineage) and its portable base model name."""

from __future__ import annotations

import json

from graftlm.store.db import session
from graftlm.store.models import FineTuningJob


def portable_base_name(base: dict) -> str:
    """The base model as another machine can name it: its Hugging Face repo for a catalog model, else its
    graftlm name (never a local path)."""
    from graftlm.models.catalog import CATALOG

    entry = CATALOG.get(base["id"])
    return entry.hf_repo if entry else base["id"]


def _job_files(job_id: str | None) -> dict:
    if not job_id:
        return {}
    with session() as s:
        job = s.get(FineTuningJob, job_id)
        return {"training_file": job.training_file, "validation_file": job.validation_file} if job else {}


def _base_note(base: dict) -> str:
    from graftlm.models.catalog import CATALOG

    entry = CATALOG.get(base["id"])
    if entry is None:
        return ""
    return (f" graftlm trained it on its own copy of the base: {entry.description}; on the original weights of "
            f"`{entry.hf_repo}` it answers closely but not identically.")


def model_card(m: dict, base: dict) -> str:
    """README.md for an exported custom model: what it was trained from, how, and on what."""
    lineage = m.get("lineage") or {}
    files = {**_job_files(lineage.get("job_id")),
             **{k: lineage[k] for k in ("training_file", "validation_file") if lineage.get(k)}}
    hyper = lineage.get("hyperparameters") or {}
    rows = [("base model", f"{base['id']} ({portable_base_name(base)})"),
            ("base model sha256", base.get("sha256") or lineage.get("base_model_sha256")),
            ("method", lineage.get("method")), ("adapter type", m.get("adapter_type")),
            ("fine-tuning job", lineage.get("job_id")), ("training file", files.get("training_file")),
            ("validation file", files.get("validation_file")), ("steps", lineage.get("steps")),
            ("best step", lineage.get("best_step")), ("trained tokens", lineage.get("trained_tokens"))]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows if v is not None)
    front = f"---\nbase_model: {portable_base_name(base)}\nlibrary_name: peft\n"
    front += f"license: {base['license']}\n---\n" if base.get("license") else "---\n"
    return (f"{front}\n# {m['id']}\n\nFine-tuned with graftlm from `{base['id']}`.{_base_note(base)}\n\n## Lineage\n\n"
            f"| | |\n|---|---|\n{table}\n\n## Hyperparameters\n\n```json\n{json.dumps(hyper, indent=1)}\n```\n\n"
            f"## Metrics\n\n```json\n{json.dumps(lineage.get('metrics') or {}, indent=1)}\n```\n")
