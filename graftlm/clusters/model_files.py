"""Can the engine load this model? Checked when an endpoint starts serving it, so broken or missing files
are refused up front with a clear 4xx instead of failing the endpoint's first request."""

from __future__ import annotations

import json
from pathlib import Path

from graftlm.errors import GraftError


def unreadable_model_files(model: dict, error: BaseException, status_code: int = 400) -> GraftError:
    reason = str(error) if isinstance(error, GraftError) else f"{type(error).__name__}: {error}"
    return GraftError(f"the files of model {model['id']} at {model['path']} cannot be served: {reason}",
                      param="model", code="model_files_unreadable", status_code=status_code)


def check_model_files(model: dict) -> None:
    """Raise a 400 naming the problem unless the model's weights (or adapter) load as the engine loads them."""
    try:
        if model["kind"] == "custom" and model["adapter_type"] != "full":
            _read_adapter(model)
        else:
            _read_shape(Path(model["path"]))
            if not any(Path(model["path"]).glob("*.safetensors")):
                raise GraftError("no *.safetensors weights")
    except Exception as e:  # noqa: BLE001 - any failure to read the files means the model cannot be served
        raise unreadable_model_files(model, e) from e


def _read_shape(path: Path):
    from graftlm.serve.model import read_shape

    return read_shape(json.loads((path / "config.json").read_text()))


def _read_adapter(model: dict) -> None:
    """Read the whole adapter (config, tensors, shapes against the base), as the engine's loader does."""
    from graftlm.models.catalog import get_model
    from graftlm.serve.adapters import read_adapter

    read_adapter(model["path"], _read_shape(Path(get_model(model["parent"])["path"])))
