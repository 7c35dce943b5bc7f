"""OpenAI-compatible inference: /v1/chat/completions and /v1/completions, streaming or not."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from graftlm.api.limits import JSONInThreadRoute
from graftlm.api.observing import CLIENT_GONE, finished_outputs, note_target, observe
from graftlm.clusters.hosting import get_runtime
from graftlm.data.render import render_prompt
from graftlm.data.tools import TOOL_CALL_OPEN, parse_tool_calls, partial_open_tag, plain_messages
from graftlm.errors import GraftError
from graftlm.rag.generate import (RagOptions, answer_budget, citation, fit_prompt, mark_cited, question_of,
                                  rag_info, retrieve, run_mode, sampling)
from graftlm.serve.sampler import SEED_RANGE, SamplingParams

router = APIRouter(route_class=JSONInThreadRoute)
DEFAULT_MAX_TOKENS = 512
MAX_STOPS, MAX_STOP_CHARS = 16, 1000  # matched against the text at every token
StopString = Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]
MAX_TOOLS, MAX_TOOL_CHARS = 128, 100_000
MAX_MESSAGES = 2048  # each message takes >= 1 token: more can never fit a context (at most 2048 here)


def at_most(n: int) -> BeforeValidator:
    """Refuse a list longer than ``n`` before validating its items (100k items would take ~1 s on the loop)."""
    def check(v):
        if isinstance(v, list) and len(v) > n:
            raise ValueError(f"at most {n} items, not {len(v)}")
        return v
    return BeforeValidator(check)


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["text"]  # image/audio parts: 400 naming the part, not silently dropped
    text: str


class FunctionCall(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    arguments: str = Field(max_length=MAX_TOOL_CHARS)  # JSON text, as OpenAI sends it


class ToolCall(BaseModel):
    id: str = Field(max_length=128)
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: Annotated[str | list[ContentPart] | None, at_most(MAX_MESSAGES)] = None
    tool_calls: Annotated[list[ToolCall] | None, at_most(MAX_TOOLS)] = None  # assistant turns
    tool_call_id: str | None = Field(None, max_length=128)  # tool turns: the call answered


class FunctionSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_-]+$")
    description: str | None = Field(None, max_length=MAX_TOOL_CHARS)
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: FunctionSpec


class NamedFunction(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: NamedFunction


MAX_N = 16  # choices per request
MAX_LOGIT_BIAS = 1024  # entries
# OpenAI request fields graftlm does not serve: a 400 naming the field, never silently ignored
UNSUPPORTED_FIELDS = {
    "audio": "audio output is not supported (the served models are text models)",
    "prediction": "predicted outputs are not supported",
    "web_search_options": "web search is not supported",
    "functions": "the deprecated functions field is not supported; send tools",
    "function_call": "the deprecated function_call field is not supported; send tool_choice",
    "reasoning_effort": "the served models are not reasoning models",
    "verbosity": "verbosity is not supported",
    "metadata": "graftlm does not store chat completions, so there is nothing to attach metadata to",
    "best_of": "best_of is not supported; send n for several choices",
    "suffix": "suffix (insertion) is not supported",
}
COMPLETIONS_UNSUPPORTED = {"tools": "tools are served by /v1/chat/completions",
                           "tool_choice": "tools are served by /v1/chat/completions",
                           "parallel_tool_calls": "tools are served by /v1/chat/completions",
                           "response_format": "response_format is served by /v1/chat/completions"}


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_-]+$")
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class Sampling(BaseModel):
    # extras are RAG options (chat with knowledge_base_id); any other field is a 400 naming it (refuse_extras)
    model_config = ConfigDict(extra="allow")
    model: str
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    n: int = Field(1, ge=1, le=MAX_N)
    stop: Annotated[StopString | list[StopString] | None, at_most(MAX_STOPS)] = None
    seed: int | None = Field(None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    logit_bias: Annotated[dict[str, Annotated[float, Field(ge=-100, le=100)]] | None,
                          at_most(MAX_LOGIT_BIAS)] = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    # accepted and documented as having no effect on the output (who asked; caching is automatic)
    user: str | None = Field(None, max_length=512)
    safety_identifier: str | None = Field(None, max_length=512)
    prompt_cache_key: str | None = Field(None, max_length=512)
    # accepted only with the values graftlm honours
    store: Literal[False] | None = None  # graftlm stores no completions
    service_tier: Literal["auto", "default"] | None = None
    modalities: list[Literal["text"]] | None = None


class ChatRequest(Sampling):
    messages: Annotated[list[ChatMessage], at_most(MAX_MESSAGES)] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    tools: Annotated[list[Tool] | None, at_most(MAX_TOOLS)] = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None


class CompletionRequest(Sampling):
    prompt: str | list[str]
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool = False


def refuse_extras(extra: dict[str, Any], known: tuple[str, ...] = (), unsupported: dict | None = None) -> None:
    """A 400 naming the first field graftlm does not serve (an unsupported OpenAI field says why; an unknown
    one suggests the closest known field)."""
    unsupported = UNSUPPORTED_FIELDS | (unsupported or {})
    for key in extra:
        if key in unsupported:
            raise GraftError(f"{key}: {unsupported[key]}", param=key, code="unsupported_parameter")
        if key not in known:
            import difflib

            fields = list(ChatRequest.model_fields) + list(CompletionRequest.model_fields) + list(known)
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise GraftError(f"unknown field {key!r}{hint}", param=key, code="unknown_parameter")


def message_text(m: ChatMessage) -> str:
    if isinstance(m.content, list):
        return "".join(p.text for p in m.content)
    return m.content or ""


def logit_bias(req: Sampling, engine) -> dict[int, float]:
    """logit_bias keys are token ids as strings (OpenAI's shape); each must be in the model's vocabulary."""
    out = {}
    for key, bias in (req.logit_bias or {}).items():
        try:
            token = int(key)
        except ValueError:
            raise GraftError(f"logit_bias keys are token ids, not {key!r}", param="logit_bias") from None
        if not 0 <= token < engine.model.shape.vocab:
            raise GraftError(f"logit_bias: token id {token} is outside this model's vocabulary (0 to "
                             f"{engine.model.shape.vocab - 1})", param="logit_bias")
        out[token] = bias
    return out


def sampling_params(req: Sampling, prompt_len: int, engine, logprobs: int | None) -> SamplingParams:
    room = engine.max_seq_len - prompt_len
    if room < 1:
        raise GraftError(f"the prompt has {prompt_len} tokens; the model serves at most {engine.max_seq_len}",
                         param="messages", code="context_length_exceeded")
    max_tokens = req.max_completion_tokens or req.max_tokens
    if max_tokens is not None and max_tokens > room:
        raise GraftError(f"prompt ({prompt_len} tokens) + max_tokens ({max_tokens}) exceeds the context of "
                         f"{engine.max_seq_len} tokens; lower max_tokens to at most {room}",
                         param="max_tokens", code="context_length_exceeded")
    stop = [req.stop] if isinstance(req.stop, str) else (req.stop or [])
    if max_tokens is None:  # a default that fits the KV cache too (the engine refuses a request that cannot)
        max_tokens = max(1, min(DEFAULT_MAX_TOKENS, room, engine.kv_capacity_tokens - prompt_len))
    return SamplingParams(max_tokens=max_tokens, temperature=req.temperature,
                          top_p=req.top_p, top_k=req.top_k, stop=stop, seed=req.seed, logprobs=logprobs,
                          presence_penalty=req.presence_penalty, frequency_penalty=req.frequency_penalty,
                          logit_bias=logit_bias(req, engine))


def chat_logprobs(tokenizer, items) -> dict | None:
    if not items or all(i is None for i in items):
        return None

    def entry(token_id: int, logprob: float) -> dict:
        token = tokenizer.decode([token_id])
        return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

    return {"content": [dict(entry(i.token_id, i.logprob), top_logprobs=[entry(t, lp) for t, lp in i.top])
                        for i in items if i is not None]}


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict:
    """OpenAI's usage; ``prompt_tokens_details.cached_tokens``: prompt tokens served from the prefix cache."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}


def finish(reason: str | None) -> str:
    return "length" if reason == "length" else "stop"


def choice_seed(seed: int | None, i: int) -> int | None:
    """Choice i of a seeded request samples with seed + i (wrapped into the seed range): n different choices,
    each reproducible."""
    if seed is None or i == 0:
        return seed
    lo, hi = SEED_RANGE
    return (seed + i - lo) % (hi - lo + 1) + lo


async def submit(target, prompt_ids: list[int], params: SamplingParams, n: int = 1) -> list:
    """Queue ``n`` choices of one prompt; returns their handles (all cancelled if one cannot be queued)."""
    handles = []
    try:
        for i in range(n):
            p = params if i == 0 else dataclasses.replace(params, seed=choice_seed(params.seed, i))
            handle = await run_in_threadpool(target.engine.submit, prompt_ids, p, target.adapter)
            get_runtime().track(target, handle)
            handles.append(handle)
    except BaseException:
        for h in handles:
            h.cancel()
            get_runtime().untrack(target, h)
        raise
    return handles


def sse(obj) -> bytes:
    return b"data: " + (obj if isinstance(obj, bytes) else orjson.dumps(obj)) + b"\n\n"


async def merged(handles):
    """(choice index, delta) from every handle as they come; a handle's error is raised."""
    if len(handles) == 1:
        async for delta in handles[0]:
            yield 0, delta
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i, handle):
        try:
            async for delta in handle:
                await queue.put((i, delta))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            await queue.put((i, e))
        finally:
            await queue.put((i, None))

    tasks = [asyncio.create_task(pump(i, h)) for i, h in enumerate(handles)]
    try:
        live = len(handles)
        while live:
            i, item = await queue.get()
            if item is None:
                live -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield i, item
    finally:
        for t in tasks:
            t.cancel()


def stream_response(request: Request, target, handles, prompt_tokens: int, make_chunk, include_usage: bool,
                    obs=None):
    async def events():
        completion, status = 0, CLIENT_GONE  # until the end is sent
        try:
            for i in range(len(handles)):
                first = make_chunk(None, i, first=True)
                if first:
                    yield sse(first)
            try:
                async for i, delta in merged(handles):
                    if await request.is_disconnected():
                        return
                    completion += len(delta.token_ids)
                    yield sse(make_chunk(delta, i))
            except GraftError as e:  # the engine failed or stopped mid-stream: the status is sent, say why
                status = e.status_code
                yield sse(e.to_dict())
                return
            if include_usage:
                cached = handles[0].result().cached_tokens if handles[0].done else 0
                yield sse(make_chunk(None, 0, usage=usage(prompt_tokens, completion, cached)))
            yield b"data: [DONE]\n\n"
            status = 200
        finally:  # a client that disconnects frees its batch rows at once
            for handle in handles:
                if not handle.done:
                    handle.cancel()
                get_runtime().untrack(target, handle)
            if obs is not None:
                obs.done(finished_outputs(handles), status)

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def collect(target, handles, obs=None) -> list:
    try:
        outs = []
        for handle in handles:
            async for _ in handle:
                pass
            outs.append(handle.result())
        if obs is not None:
            obs.done(outs, 200)
        return outs
    finally:
        for handle in handles:
            if not handle.done:
                handle.cancel()
            get_runtime().untrack(target, handle)


def total_usage(outs) -> dict:
    """The prompt counted once (the choices share it), the completions of every choice."""
    return usage(outs[0].prompt_tokens, sum(o.completion_tokens for o in outs), outs[0].cached_tokens)


def chat_messages(req: ChatRequest) -> list[dict]:
    """The messages as text (tools offered, tool calls and tool results written in, data.tools)."""
    messages = []
    for m in req.messages:
        msg = {"role": "system" if m.role == "developer" else m.role, "content": message_text(m)}
        if m.tool_calls:
            msg["tool_calls"] = [c.model_dump() for c in m.tool_calls]
        messages.append(msg)
    return plain_messages(messages, [t.model_dump() for t in req.tools] if offers_tools(req) else None)


def offers_tools(req: ChatRequest) -> bool:
    return bool(req.tools) and req.tool_choice != "none"


def check_tools(req: ChatRequest) -> None:
    if req.tool_choice is not None and not req.tools:
        raise GraftError("tool_choice needs tools", param="tool_choice")
    if isinstance(req.tool_choice, NamedToolChoice):
        names = [t.function.name for t in req.tools]
        if req.tool_choice.function.name not in names:
            raise GraftError(f"tool_choice names {req.tool_choice.function.name!r}, which is not among the tools "
                             f"({', '.join(names)})", param="tool_choice")
    forced = req.tool_choice == "required" or isinstance(req.tool_choice, NamedToolChoice)
    if forced and req.response_format is not None and req.response_format.type != "text":
        raise GraftError("a required or named tool_choice already constrains the answer; drop response_format",
                         param="response_format")


class ToolStream:
    """Streams one choice's content while holding back anything that may be a tool call; at the end, the
    calls in OpenAI's delta shape."""

    def __init__(self, names: set[str], parallel: bool):
        self.names, self.parallel, self.text, self.sent = names, parallel, "", 0

    def delta(self, delta) -> tuple[dict, str | None]:
        self.text += delta.text
        if not delta.finish_reason:
            at = self.text.find(TOOL_CALL_OPEN)
            safe = at if at >= 0 else len(self.text) - partial_open_tag(self.text)
            out, self.sent = self.text[self.sent:max(safe, self.sent)], max(safe, self.sent)
            return ({"content": out} if out else {}), None
        content, calls = answer_calls(self.text, self.names, self.parallel)
        if not calls:
            rest = self.text[self.sent:]
            return ({"content": rest} if rest else {}), finish(delta.finish_reason)
        rest = (content or "")[self.sent:]
        return ({"content": rest} if rest else {}) | {
            "tool_calls": [c | {"index": k} for k, c in enumerate(calls)]}, "tool_calls"


def answer_calls(text: str, names: set[str], parallel: bool) -> tuple[str | None, list[dict]]:
    content, calls = parse_tool_calls(text, names)
    return content, calls if parallel else calls[:1]


def tool_grammar(req: ChatRequest, engine):
    """A grammar forcing one valid call for tool_choice required or a named function; None otherwise."""
    tools = [t.model_dump() for t in req.tools or []]
    if req.tool_choice == "required":
        return engine.grammars.tool_call(tools)
    if isinstance(req.tool_choice, NamedToolChoice):
        return engine.grammars.tool_call(tools, req.tool_choice.function.name)
    return None


@router.post("/chat/completions")
async def chat_completions(req: ChatRequest, request: Request):
    if (req.model_extra or {}).get("knowledge_base_id") is not None:  # RAG: retrieve, cite, generate
        return await rag_chat_completion(req, request)
    refuse_extras(req.model_extra or {})
    check_tools(req)
    runtime = get_runtime()
    target = await run_in_threadpool(runtime.resolve, req.model)
    note_target(request, target)
    tokenizer = target.engine.tokenizer
    messages = chat_messages(req)
    target.engine.check_prompt_chars(sum(len(m["content"]) for m in messages), "messages")
    prompt_ids = await run_in_threadpool(render_prompt, tokenizer, messages)  # CPU work off the event loop
    want_logprobs = (req.top_logprobs or 0) if req.logprobs else None
    params = sampling_params(req, len(prompt_ids), target.engine, want_logprobs)
    params.grammar = await response_grammar(req, target.engine) or \
        await run_in_threadpool(tool_grammar, req, target.engine)
    handles = await submit(target, prompt_ids, params, req.n)
    rid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
    obs = observe(request, target, completion_id=rid, kind="chat", body={"messages": messages})
    tools = offers_tools(req)
    names, parallel = {t.function.name for t in req.tools or []}, req.parallel_tool_calls is not False

    if req.stream:
        streams = [ToolStream(names, parallel) for _ in handles]

        def chunk(delta, index, first=False, usage=None):
            base = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": req.model}
            if usage is not None:
                return base | {"choices": [], "usage": usage}
            if first:
                return base | {"choices": [{"index": index, "delta": {"role": "assistant", "content": ""},
                                            "logprobs": None, "finish_reason": None}]}
            if tools:
                body, reason = streams[index].delta(delta)
            else:
                body = {"content": delta.text} if delta.text else {}
                reason = finish(delta.finish_reason) if delta.finish_reason else None
            return base | {"choices": [{"index": index, "delta": body,
                                        "logprobs": chat_logprobs(tokenizer, delta.logprobs), "finish_reason": reason}]}
        include = bool((req.stream_options or {}).get("include_usage"))
        return stream_response(request, target, handles, len(prompt_ids), chunk, include, obs)

    outs = await collect(target, handles, obs)

    def choice(i, out):
        message, reason = {"role": "assistant", "content": out.text}, finish(out.finish_reason)
        if tools:
            content, calls = answer_calls(out.text, names, parallel)
            if calls:
                message, reason = {"role": "assistant", "content": content, "tool_calls": calls}, "tool_calls"
        return {"index": i, "message": message, "logprobs": chat_logprobs(tokenizer, out.logprobs),
                "finish_reason": reason}
    return {"id": rid, "object": "chat.completion", "created": created, "model": req.model,
            "system_fingerprint": f"graftlm-{target.model['id']}",
            "choices": [choice(i, out) for i, out in enumerate(outs)], "usage": total_usage(outs)}


async def response_grammar(req: ChatRequest, engine):
    """The compiled grammar for ``response_format`` (None for text), compiled off the event loop."""
    fmt = req.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return await run_in_threadpool(lambda: engine.grammars.json_object())
    if fmt.json_schema is None:
        raise GraftError("response_format json_schema needs a json_schema object {name, schema, strict}",
                         param="response_format.json_schema")
    return await run_in_threadpool(engine.grammars.json_schema, fmt.json_schema.schema_)


@router.post("/completions")
async def completions(req: CompletionRequest, request: Request):
    refuse_extras(req.model_extra or {}, unsupported=COMPLETIONS_UNSUPPORTED)
    prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
    if len(prompts) != 1:
        raise GraftError("send one prompt per request", param="prompt")
    runtime = get_runtime()
    target = await run_in_threadpool(runtime.resolve, req.model)
    note_target(request, target)
    tokenizer = target.engine.tokenizer
    target.engine.check_prompt_chars(len(prompts[0]), "prompt")
    # the whole prompt is the client's own (no template around it): its control tokens are meant
    prompt_ids = (await run_in_threadpool(tokenizer, prompts[0], add_special_tokens=False))["input_ids"]
    if not prompt_ids:
        raise GraftError("the prompt is empty", param="prompt")
    params = sampling_params(req, len(prompt_ids), target.engine, req.logprobs)
    handles = await submit(target, prompt_ids, params, req.n)
    rid, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
    obs = observe(request, target, completion_id=rid, kind="text", body={"prompt": prompts[0]})

    def logprobs_block(items):
        items = [i for i in items or [] if i is not None]
        if req.logprobs is None or not items:
            return None
        return {"tokens": [tokenizer.decode([i.token_id]) for i in items],
                "token_logprobs": [i.logprob for i in items],
                "top_logprobs": [{tokenizer.decode([t]): lp for t, lp in i.top} for i in items],
                "text_offset": []}

    if req.stream:
        def chunk(delta, index, first=False, usage=None):
            base = {"id": rid, "object": "text_completion", "created": created, "model": req.model}
            if usage is not None:
                return base | {"choices": [], "usage": usage}
            if first:
                return None
            return base | {"choices": [{"index": index, "text": delta.text, "logprobs": logprobs_block(delta.logprobs),
                                        "finish_reason": finish(delta.finish_reason) if delta.finish_reason else None}]}
        include = bool((req.stream_options or {}).get("include_usage"))
        return stream_response(request, target, handles, len(prompt_ids), chunk, include, obs)

    outs = await collect(target, handles, obs)
    head = prompts[0] if req.echo else ""
    return {"id": rid, "object": "text_completion", "created": created, "model": req.model,
            "choices": [{"index": i, "text": head + out.text, "logprobs": logprobs_block(out.logprobs),
                         "finish_reason": finish(out.finish_reason)} for i, out in enumerate(outs)],
            "usage": total_usage(outs)}


# RAG: POST /v1/chat/completions with knowledge_base_id ----------------------------------------------

# request fields the RAG modes do not serve (they build their own prompts and pick among whole answers)
RAG_REFUSED = {"n": 1, "presence_penalty": 0.0, "frequency_penalty": 0.0, "logit_bias": None}


def rag_options(req: ChatRequest) -> RagOptions:
    """The request's RAG options (typed; a misspelled or unknown one is a 400 naming it)."""
    extra = req.model_extra or {}
    refuse_extras({k: v for k, v in extra.items() if k in UNSUPPORTED_FIELDS})
    for name, default in RAG_REFUSED.items():
        if getattr(req, name) not in (default, {}):
            raise GraftError(f"{name} is not supported with knowledge_base_id", param=name,
                             code="unsupported_parameter")
    for name in ("tools", "tool_choice", "parallel_tool_calls"):
        if getattr(req, name) is not None:
            raise GraftError(f"{name} is not supported with knowledge_base_id", param=name,
                             code="unsupported_parameter")
    if req.response_format is not None and req.response_format.type != "text":
        raise GraftError("response_format is not supported with knowledge_base_id", param="response_format",
                         code="unsupported_parameter")
    return RagOptions.parse(extra)


async def rag_chat_completion(req: ChatRequest, request: Request):
    """``POST /v1/chat/completions`` with ``knowledge_base_id`` and the other RagOptions (``passages``: how many
    to retrieve, default 4); ``top_k`` is top-k sampling here too.

    Streaming: the first chunk carries ``citations``; stuff streams token by token, the other modes
    (which pick or mix whole answers) send the answer in one content chunk.
    """
    opts = rag_options(req)
    target = await run_in_threadpool(get_runtime().resolve, req.model)
    messages = chat_messages(req)
    target.engine.check_prompt_chars(sum(len(m["content"]) for m in messages), "messages")
    question = question_of(messages)
    passages = await run_in_threadpool(retrieve, opts, question)
    max_tokens = req.max_completion_tokens or req.max_tokens
    kw = {"temperature": req.temperature, "top_p": req.top_p, "top_k": req.top_k, "stop": req.stop, "seed": req.seed}
    rid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
    base = {"id": rid, "created": created, "model": req.model}
    tokenizer = target.engine.tokenizer

    if opts.rag_mode == "stuff":
        budget = answer_budget(target.engine, max_tokens)
        ids, cited = await run_in_threadpool(fit_prompt, tokenizer, messages, passages, budget)
        want_logprobs = (req.top_logprobs or 0) if req.logprobs else None
        params = sampling(target.engine, len(ids), max_tokens=max_tokens, logprobs=want_logprobs, **kw)
        handles = await submit(target, ids, params)
        citations, info = [citation(p) for p in cited], rag_info(opts, None)
        if req.stream:
            streamed: list[str] = []

            def chunk(delta, index, first=False, usage=None):
                head = base | {"object": "chat.completion.chunk"}
                if usage is not None:
                    return head | {"choices": [], "usage": usage}
                if first:
                    return head | {"citations": citations, "rag": info,
                                   "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                "logprobs": None, "finish_reason": None}]}
                streamed.append(delta.text or "")
                out = head | {"choices": [{"index": 0, "delta": {"content": delta.text} if delta.text else {},
                                           "logprobs": chat_logprobs(tokenizer, delta.logprobs),
                                           "finish_reason": finish(delta.finish_reason)
                                           if delta.finish_reason else None}]}
                if delta.finish_reason:  # the whole text is known now: which passages it cites
                    out["rag"] = {}
                    mark_cited([dict(c) for c in citations], "".join(streamed), out["rag"])
                return out
            include = bool((req.stream_options or {}).get("include_usage"))
            return stream_response(request, target, handles, len(ids), chunk, include)
        (out,) = await collect(target, handles)
        return base | {"object": "chat.completion", "system_fingerprint": f"graftlm-{target.model['id']}",
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": out.text},
                                    "logprobs": chat_logprobs(tokenizer, out.logprobs),
                                    "finish_reason": finish(out.finish_reason)}],
                       "usage": usage(out.prompt_tokens, out.completion_tokens, out.cached_tokens),
                       "citations": mark_cited(citations, out.text, info), "rag": info}

    ans, cited = await run_in_threadpool(lambda: run_mode(target, messages, passages, rag_mode=opts.rag_mode,
                                                          max_tokens=max_tokens,
                                                          retrieve_again=lambda q: retrieve(opts, q), **kw))
    info = rag_info(opts, ans)
    citations = mark_cited([citation(p) for p in cited], ans.text, info)  # the whole answer is known: mark it
    used, reason = usage(ans.prompt_tokens, ans.completion_tokens), finish(ans.finish_reason)
    if req.stream:
        head = base | {"object": "chat.completion.chunk"}

        def choice(delta, finish_reason=None):
            return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]

        chunks = [head | {"citations": citations, "rag": info, "choices": choice({"role": "assistant", "content": ""})},
                  head | {"choices": choice({"content": ans.text} if ans.text else {})},
                  head | {"choices": choice({}, reason)}]
        if (req.stream_options or {}).get("include_usage"):
            chunks.append(head | {"choices": [], "usage": used})

        async def events():
            for c in chunks:
                yield sse(c)
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return base | {"object": "chat.completion", "system_fingerprint": f"graftlm-{target.model['id']}",
                   "choices": [{"index": 0, "message": {"role": "assistant", "content": ans.text},
                                "logprobs": None, "finish_reason": reason}],
                   "usage": used, "citations": citations, "rag": info}
