"""StrictModel: the base of graftlm's request schemas (JobSpec, RagOptions, RunOptions). Unknown fields are
refused, and ``parse`` turns pydantic's first error into a GraftError naming the field (a 400)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from graftlm.errors import GraftError


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    field_kind: ClassVar[str] = "field"  # how messages call a field: "job field", "RAG option", ...
    unknown_hint: ClassVar[str] = ""

    @classmethod
    def parse(cls, data: dict):
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            err = e.errors()[0]
            field = ".".join(str(p) for p in err["loc"]) or cls.field_kind
            if err["type"] == "extra_forbidden":
                message = f"unknown {cls.field_kind} {field!r}; known: {', '.join(cls.model_fields)}{cls.unknown_hint}"
            else:
                message = f"{field}: {err['msg']}"
            raise GraftError(message, param=field) from None
