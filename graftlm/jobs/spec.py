"""JobSpec: the one fine-tuning job request, used by POST /v1/fine_tuning/jobs, `graft finetune create`
(flags and --config YAML) and the SDK. Its hyperparameters are graftlm.train.config.FineTuneConfig's fields;
GET /v1/fine_tuning/schema serves JobSpec.json_schema() (the request with those fields inlined)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import Field

from graftlm.errors import GraftError
from graftlm.schema import StrictModel
from graftlm.train.config import FineTuneConfig

OPENAI_AUTO = ("n_epochs", "batch_size", "learning_rate_multiplier")  # "auto" = leave it to the schema default


class JobSpec(StrictModel):
    field_kind = "job field"
    unknown_hint = ' (hyperparameters go under "hyperparameters")'
    model: str = Field(description="base model id, or a LoRA / T-Few custom model (ft:…) to train further")
    training_file: str = Field(description="file id (a local path in YAML and the CLI, uploaded first)")
    validation_file: str | None = None
    suffix: str | None = Field(None, description="part of the custom model's name: 1-64 characters, no ':'")
    seed: int | None = None
    method: dict[str, Any] | None = Field(None, description='OpenAI: {"type": "supervised", "supervised": '
                                                            '{"hyperparameters": {...}}}')
    hyperparameters: dict[str, Any] | None = Field(None, description="FineTuneConfig fields")
    metadata: dict[str, str] | None = Field(None, description="stored with the job and returned (OpenAI)")
    integrations: list[Any] | None = Field(None, description="accepted for OpenAI clients; none is run")
    dedicated_ai_cluster_id: str | None = None

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides) -> "JobSpec":
        """A YAML job spec file: the JobSpec fields; any other top-level key is taken as a hyperparameter, so a
        flat file of FineTuneConfig fields plus model and training_file works too. ``overrides`` that are not
        None replace fields (the CLI's flags)."""
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise GraftError(f"cannot read the job spec {path}: {e}", param="config") from e
        if not isinstance(data, dict):
            raise GraftError("a YAML job spec is a mapping of fields", param="config")
        hyper = dict(data.pop("hyperparameters", None) or {})
        if isinstance(data.get("method"), str):  # `method: lora` is FineTuneConfig's alias of training_method
            hyper["training_method"] = data.pop("method")
        hyper |= {k: data.pop(k) for k in list(data) if k not in cls.model_fields}
        data |= {k: v for k, v in overrides.items() if v is not None}
        return cls.parse({**data, "hyperparameters": hyper or None})

    def hyperparameter_dict(self) -> dict:
        """The hyperparameters from ``hyperparameters`` and OpenAI's method.supervised.hyperparameters, with
        ``seed``; OpenAI's "auto" values removed (the schema's defaults are auto)."""
        merged = dict(self.hyperparameters or {})
        if self.method:
            kind = self.method.get("type", "supervised")
            if kind not in ("supervised", "dpo"):
                raise GraftError(f"method.type {kind!r} is not supported; use \"supervised\" or \"dpo\"",
                                 param="method.type")
            given = dict((self.method.get(kind) or {}).get("hyperparameters") or {})
            if kind == "dpo":
                merged["objective"] = "dpo"
                if "beta" in given:  # OpenAI's name
                    beta = given.pop("beta")
                    if beta != "auto":
                        given["dpo_beta"] = beta
            merged |= given
        for name in OPENAI_AUTO:
            if merged.get(name) == "auto":
                merged.pop(name)
        if self.seed is not None:
            merged["seed"] = self.seed
        return merged

    @classmethod
    def json_schema(cls) -> dict:
        """The request's JSON schema, ``hyperparameters`` described by FineTuneConfig's."""
        schema = cls.model_json_schema()
        hyper = FineTuneConfig.model_json_schema()
        schema.setdefault("$defs", {}).update(hyper.pop("$defs", {}))
        schema["$defs"]["FineTuneConfig"] = hyper
        schema["properties"]["hyperparameters"] = {"anyOf": [{"$ref": "#/$defs/FineTuneConfig"}, {"type": "null"}],
                                                   "default": None, "description": "FineTuneConfig fields"}
        return schema
