"""What crosses the boundary between the API process and an engine replica: msgpack messages over ZeroMQ.

Requests carry token ids and sampling parameters (a grammar travels as the call that compiles it, so the
replica compiles it with its own tokenizer and cache); replies carry deltas, the final output and errors. A
``GraftError`` keeps its class where the API maps it to a status (429 QueueFull with Retry-After, 503
EngineUnavailable, 500 RowFailed) and otherwise its status, type, param and code.
"""

from __future__ import annotations

import dataclasses

import msgpack

from graftlm.errors import GraftError

from .request import Delta, Output
from .sampler import SamplingParams, TokenLogprob


def pack(msg) -> bytes:
    return msgpack.packb(msg, use_bin_type=True)


def unpack(data: bytes):
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


@dataclasses.dataclass(frozen=True)
class GrammarSpec:
    """A grammar as the call that compiles it on the replica: ``engine.grammars.<method>(*args)``."""
    method: str  # json_schema | tool_call | json_object
    args: tuple = ()


class GrammarSpecs:
    """The API process's stand-in for ``Engine.grammars``: checks what it can without compiling (the replica
    compiles, and its refusal comes back as the same 400)."""

    def json_schema(self, schema: dict, where: str = "response_format.json_schema.schema") -> GrammarSpec:
        from .grammar import check_schema

        check_schema(schema, where)
        return GrammarSpec("json_schema", (schema, where))

    def tool_call(self, tools: list[dict], name: str | None = None) -> GrammarSpec:
        return GrammarSpec("tool_call", (tools, name))

    def json_object(self) -> GrammarSpec:
        return GrammarSpec("json_object")


def encode_params(p: SamplingParams) -> dict:
    out = {f.name: getattr(p, f.name) for f in dataclasses.fields(p) if f.name != "grammar"}
    if p.grammar is not None:
        if not isinstance(p.grammar, GrammarSpec):
            raise TypeError("a replica takes a grammar as a GrammarSpec (ReplicaSet.grammars), not compiled")
        out["grammar"] = [p.grammar.method, list(p.grammar.args)]
    return out


def decode_params(d: dict, grammars=None) -> SamplingParams:
    grammar = d.pop("grammar", None)
    params = SamplingParams(**d)
    if grammar is not None:
        method, args = grammar
        params.grammar = getattr(grammars, method)(*args)
    return params


def encode_logprobs(items) -> list:
    return [None if i is None else [i.token_id, i.logprob, [list(t) for t in i.top]] for i in items]


def decode_logprobs(items) -> list:
    return [None if i is None else TokenLogprob(i[0], i[1], [tuple(t) for t in i[2]]) for i in items]


def encode_delta(d: Delta) -> list:
    return [d.text, d.token_ids, encode_logprobs(d.logprobs), d.finish_reason]


def decode_delta(d: list) -> Delta:
    return Delta(d[0], d[1], decode_logprobs(d[2]), d[3])


def encode_output(o: Output | None) -> dict | None:
    if o is None:
        return None
    out = dataclasses.asdict(o)
    out["logprobs"] = encode_logprobs(o.logprobs)
    return out


def decode_output(d: dict | None) -> Output | None:
    if d is None:
        return None
    d["logprobs"] = decode_logprobs(d["logprobs"])
    return Output(**d)


def encode_error(e: BaseException) -> dict:
    if isinstance(e, GraftError):
        return {"class": type(e).__name__, "message": e.message, "param": e.param, "code": e.code,
                "status": e.status_code, "type": e.error_type, "retry_after": getattr(e, "retry_after", None)}
    return {"class": "RowFailed", "message": f"this request failed in the serving engine ({type(e).__name__}: {e}); "
                                             f"other requests on the engine were not affected"}


def decode_error(d: dict) -> GraftError:
    from .engine import EngineUnavailable, RowFailed
    from .scheduler import QueueFull

    cls = d["class"]
    if cls == "QueueFull":
        return QueueFull(d["message"], d.get("retry_after") or 1)
    if cls == "EngineUnavailable":
        return EngineUnavailable(d["message"])
    if cls == "RowFailed":
        return RowFailed(d["message"])
    error = GraftError(d["message"], param=d.get("param"), code=d.get("code"), status_code=d.get("status"))
    if d.get("type"):
        error.error_type = d["type"]
    return error
