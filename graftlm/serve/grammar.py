"""Structured outputs: a JSON schema (or "any JSON object") compiled by xgrammar into a grammar whose token
bitmask is applied to that row's logits at every step, so the text always parses and validates.

One ``Grammars`` per engine holds xgrammar's view of the tokenizer and a cache of compiled grammars (keyed
by the canonical schema text); each row gets its own ``GrammarMatcher`` (``Grammar.matcher()``), advanced
with every token it samples. Rows without a grammar are untouched, so a mixed batch gives them the same
tokens as a batch without grammar rows.

Only the JSON-schema keywords xgrammar enforces are accepted (``SUPPORTED``); any other keyword is a 400
naming it and where it is, rather than a constraint silently dropped and an output that does not validate.
"""

from __future__ import annotations

import functools
import json
import threading
from collections import OrderedDict

import torch

from graftlm.errors import GraftError

CACHE_SIZE = 256  # compiled grammars kept per engine
MAX_SCHEMA_CHARS = 100_000

# keywords enforced by the grammar, by the kind of schema they apply to
SUPPORTED = {
    "type", "enum", "const", "anyOf", "$ref", "$defs", "definitions",
    "properties", "required", "additionalProperties",
    "items", "prefixItems", "minItems", "maxItems",
    "minLength", "maxLength", "pattern", "format",
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
}
ANNOTATIONS = {"title", "description", "default", "examples", "$schema", "$id", "$comment", "deprecated",
               "readOnly", "writeOnly"}
FORMATS = {"date", "time", "date-time", "email", "uuid", "ipv4"}
TYPES = {"object", "array", "string", "number", "integer", "boolean", "null"}


MAX_SCHEMA_DEPTH = 64


def check_schema(schema, where: str, depth: int = 0) -> None:
    """A 400 naming the first keyword the grammar would not enforce (path in ``param``)."""
    if depth > MAX_SCHEMA_DEPTH:
        raise GraftError(f"{where}: the schema nests deeper than {MAX_SCHEMA_DEPTH} levels", param=where,
                         code="unsupported_schema")
    if isinstance(schema, bool):
        return
    if not isinstance(schema, dict):
        raise GraftError(f"{where}: a schema must be an object or a boolean", param=where)
    for key, value in schema.items():
        at = f"{where}.{key}"
        if key in ANNOTATIONS:
            continue
        if key not in SUPPORTED:
            raise GraftError(f"{at}: the JSON-schema keyword {key!r} is not supported in structured outputs "
                             f"(supported: {', '.join(sorted(SUPPORTED))})", param=at, code="unsupported_schema")
        if key == "type":
            kinds = value if isinstance(value, list) else [value]
            bad = [k for k in kinds if k not in TYPES]
            if bad or not kinds:
                raise GraftError(f"{at}: unknown type {bad[0] if bad else value!r}", param=at,
                                 code="unsupported_schema")
        elif key == "format" and value not in FORMATS:
            raise GraftError(f"{at}: format {value!r} is not supported (supported: {', '.join(sorted(FORMATS))})",
                             param=at, code="unsupported_schema")
        elif key == "$ref" and not (isinstance(value, str) and value.startswith("#")):
            raise GraftError(f"{at}: only local references (#/$defs/...) are supported", param=at,
                             code="unsupported_schema")
        elif key in ("properties", "$defs", "definitions"):
            if not isinstance(value, dict):
                raise GraftError(f"{at}: must be an object of schemas", param=at)
            for name, sub in value.items():
                check_schema(sub, f"{at}.{name}", depth + 1)
        elif key in ("items", "additionalProperties"):
            check_schema(value, at, depth + 1)
        elif key in ("anyOf", "prefixItems"):
            if not isinstance(value, list) or not value:
                raise GraftError(f"{at}: must be a non-empty list of schemas", param=at)
            for i, sub in enumerate(value):
                check_schema(sub, f"{at}.{i}", depth + 1)


def _second_byte_range(lead: int) -> tuple[int, int]:
    return {0xE0: (0xA0, 0xBF), 0xED: (0x80, 0x9F), 0xF0: (0x90, 0xBF), 0xF4: (0x80, 0x8F)}.get(lead, (0x80, 0xBF))


def utf8_tail(data: bytes) -> bytes | None:
    """The incomplete character at the end of ``data`` (b"" when none), or None when ``data`` is not valid
    UTF-8 or cannot become valid (RFC 3629: no overlong forms, no surrogates, nothing above U+10FFFF). Python's
    incremental decoder accepts b"\xed\xa8" (the start of a surrogate) until a third byte arrives."""
    i, n = 0, len(data)
    while i < n:
        lead = data[i]
        if lead < 0x80:
            i += 1
            continue
        if 0xC2 <= lead <= 0xDF:
            size = 2
        elif 0xE0 <= lead <= 0xEF:
            size = 3
        elif 0xF0 <= lead <= 0xF4:
            size = 4
        else:
            return None
        for k in range(1, size):
            if i + k == n:
                return data[i:]
            lo, hi = _second_byte_range(lead) if k == 1 else (0x80, 0xBF)
            if not lo <= data[i + k] <= hi:
                return None
        i += size
    return b""


class Grammar:
    """A compiled grammar; ``matcher()`` gives one row its own state."""

    def __init__(self, compiled, key: str, owner: Grammars):
        self.compiled, self.key, self.owner = compiled, key, owner

    def matcher(self) -> RowGrammar:
        return RowGrammar(self.owner._xgr.GrammarMatcher(self.compiled), self.owner)


class RowGrammar:
    """One row's grammar state: xgrammar's matcher plus the bytes of a UTF-8 character still incomplete
    (xgrammar admits some invalid UTF-8, e.g. surrogates, inside strings; the engine bans those tokens)."""

    def __init__(self, matcher, owner: Grammars):
        self.matcher, self.owner, self.pending = matcher, owner, b""

    def accept_token(self, token: int) -> bool:
        if not self.matcher.accept_token(token):
            return False
        vocab = self.owner.decoded_vocab
        self.pending = utf8_tail(self.pending + (vocab[token] if token < len(vocab) else b"")) or b""
        return True


class Grammars:
    """One engine's grammar compiler (its tokenizer, vocabulary and stop tokens) and compiled-grammar cache."""

    def __init__(self, tokenizer, vocab_size: int, stop_token_ids):
        try:
            import xgrammar as xgr
        except ImportError as e:  # the [structured] extra is not installed
            raise GraftError("structured outputs need xgrammar: pip install 'graftlm[structured]'",
                             param="response_format", code="unsupported_parameter") from e
        self._xgr = xgr
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size,
                                                  stop_token_ids=sorted(stop_token_ids))
        self.vocab_size = vocab_size
        self.decoded_vocab = [bytes(b) for b in info.decoded_vocab]
        self.special_ids = {int(i) for i in info.special_token_ids} | set(stop_token_ids)
        self._banned: dict[bytes, torch.Tensor] = {}
        self._compiler = xgr.GrammarCompiler(info, cache_enabled=False)  # ours below is bounded
        self._cache: OrderedDict[str, Grammar] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def json_schema(self, schema: dict, where: str = "response_format.json_schema.schema") -> Grammar:
        check_schema(schema, where)
        text = json.dumps(schema, sort_keys=True, separators=(",", ":"))
        if len(text) > MAX_SCHEMA_CHARS:
            raise GraftError(f"{where}: the schema has {len(text)} characters; at most {MAX_SCHEMA_CHARS}",
                             param=where)
        return self._get("schema:" + text, lambda: self._compiler.compile_json_schema(
            text, strict_mode=True, any_whitespace=False), where)

    def tool_call(self, tools: list[dict], name: str | None = None) -> Grammar:
        """Exactly one call ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` of one of ``tools``
        (OpenAI function tools), or of the function ``name``; arguments follow the function's parameters."""
        options = []
        for i, tool in enumerate(tools):
            fn = tool["function"]
            if name is not None and fn["name"] != name:
                continue
            params = fn.get("parameters") or {"type": "object"}
            check_schema(params, f"tools.{i}.function.parameters")
            options.append({"type": "object", "properties": {"name": {"const": fn["name"]}, "arguments": params},
                            "required": ["name", "arguments"], "additionalProperties": False})
        schema = options[0] if len(options) == 1 else {"anyOf": options}
        text = json.dumps(schema, sort_keys=True, separators=(",", ":"))
        xgr = self._xgr

        def compile_():
            from graftlm.data.tools import TOOL_CALL_CLOSE, TOOL_CALL_OPEN

            body = xgr.Grammar.from_json_schema(text, any_whitespace=False, strict_mode=True)
            grammar = xgr.Grammar.concat(xgr.Grammar.from_ebnf(f"root ::= {json.dumps(TOOL_CALL_OPEN)}"), body,
                                         xgr.Grammar.from_ebnf(f"root ::= {json.dumps(TOOL_CALL_CLOSE)}"))
            return self._compiler.compile_grammar(grammar)
        return self._get("tool:" + text, compile_, "tools")

    def json_object(self) -> Grammar:
        """Any JSON object (OpenAI's ``json_object`` mode)."""
        return self._get("object", lambda: self._compiler.compile_json_schema(
            '{"type": "object"}', strict_mode=False, any_whitespace=False), "response_format")

    def _get(self, key: str, compile_, where: str) -> Grammar:
        with self._lock:
            grammar = self._cache.get(key)
            if grammar is not None:
                self._cache.move_to_end(key)
                self.hits += 1
                return grammar
            try:
                compiled = compile_()
            except Exception as e:  # noqa: BLE001 - xgrammar's own refusal of the schema: the client's input
                raise GraftError(f"{where}: the schema cannot be compiled ({str(e).splitlines()[-1][:300]})",
                                 param=where, code="unsupported_schema") from e
            self.misses += 1
            grammar = self._cache[key] = Grammar(compiled, key, self)
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
            return grammar


    def banned(self, pending: bytes) -> torch.Tensor:
        """Token ids a grammar row must not take after ``pending`` (an incomplete UTF-8 character, or b""):
        those whose bytes would make the text invalid UTF-8 (xgrammar lets surrogates through), and those with
        a raw control character, which xgrammar's JSON strings admit and JSON forbids unescaped (compact JSON
        has no whitespace but spaces, so no grammar row needs one). Cached per ``pending``."""
        banned = self._banned.get(pending)
        if banned is None:
            if pending:  # after an incomplete character xgrammar admits only continuation bytes: check those
                ids = [i for i in self._continuations if utf8_tail(pending + self.decoded_vocab[i]) is None]
                ids += self._always_banned
            else:  # nothing may start with a continuation byte
                ids = self._always_banned + self._continuations
            banned = self._banned[pending] = torch.tensor(ids, dtype=torch.long)
        return banned

    @functools.cached_property
    def _always_banned(self) -> list[int]:
        """Tokens with a raw control character or invalid UTF-8 inside them, whatever comes before."""
        out = []
        for i, b in enumerate(self.decoded_vocab[:self.vocab_size]):
            if i in self.special_ids or not b:
                continue
            if any(c < 0x20 for c in b):
                out.append(i)
            elif (b[0] < 0x80 and any(c >= 0x80 for c in b)) or b[0] >= 0xC0:
                if utf8_tail(b) is None:
                    out.append(i)
        return out

    @functools.cached_property
    def _continuations(self) -> list[int]:
        """Tokens that start with a UTF-8 continuation byte (0x80-0xBF)."""
        return [i for i, b in enumerate(self.decoded_vocab[:self.vocab_size])
                if b and 0x80 <= b[0] <= 0xBF and i not in self.special_ids]

    def apply_masks(self, logits: torch.Tensor, rows_state: list[RowGrammar], rows: list[int]) -> None:
        """Mask, in place, every token of ``logits`` [B, V] that row ``rows[i]``'s grammar does not allow next."""
        xgr = self._xgr
        bitmask = xgr.allocate_token_bitmask(logits.shape[0], logits.shape[-1])
        by_pending: dict[bytes, list[int]] = {}
        for state, row in zip(rows_state, rows):
            state.matcher.fill_next_token_bitmask(bitmask, row)
            by_pending.setdefault(state.pending, []).append(row)
        xgr.apply_token_bitmask_inplace(logits, bitmask.to(logits.device), indices=rows)
        for pending, group in by_pending.items():
            banned = self.banned(pending)
            if banned.numel():
                index = torch.tensor(group, device=logits.device)[:, None]
                logits[index, banned.to(logits.device)[None, :]] = -float("inf")
