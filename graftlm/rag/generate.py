"""Grounded answers with citations: retrieve from a knowledge base, number the passages [1], [2], ... in the
prompt, generate with one of the RAG modes (graftlm.rag.modes), and return the answer with its citations.

``answer()`` is the embedded entry point; graftlm.api.routes.inference serves ``POST /v1/chat/completions`` with
``knowledge_base_id`` from the same pieces (the normal chat.completion JSON plus ``citations`` and ``rag``).
"""

from __future__ import annotations

import re

from typing import Any, Literal

from pydantic import Field

from graftlm import rag
from graftlm.data.render import render_prompt, text_ids
from graftlm.errors import GraftError
from graftlm.rag import modes
from graftlm.schema import StrictModel
from graftlm.serve.sampler import SamplingParams

DEFAULT_PASSAGES = 4
MAX_PASSAGES = 50
DEFAULT_SEARCH_MODE = "hybrid"
DEFAULT_MAX_TOKENS = 512
SYSTEM_PROMPT = ("Answer the question using the numbered passages below. Cite the passages you use by their "
                 "numbers in brackets, like [1]. If the passages do not contain the answer, say so.")


class RagOptions(StrictModel):
    """The RAG options of a chat request (top-level fields next to the OpenAI ones), one schema for the API,
    the SDK and the CLI. ``passages`` is how many passages to retrieve; ``top_k`` stays top-k sampling."""
    field_kind = "RAG option"
    knowledge_base_id: str = Field(min_length=1)
    passages: int = Field(DEFAULT_PASSAGES, ge=1, le=MAX_PASSAGES)
    search_mode: Literal[tuple(rag.MODES)] = DEFAULT_SEARCH_MODE
    rag_mode: Literal[tuple(modes.RAG_MODES)] = "stuff"
    filters: dict[str, Any] | None = None


def question_of(messages: list[dict]) -> str:
    users = [m["content"] for m in messages if m["role"] == "user" and (m["content"] or "").strip()]
    if not users:
        raise GraftError("RAG needs a user message to retrieve passages for", param="messages")
    return users[-1]


def retrieve(opts: RagOptions, query: str, *, db=None) -> list[dict]:
    """The numbered passages for ``query`` (index 1, 2, ...)."""
    hits = rag.search(opts.knowledge_base_id, query, top_k=opts.passages, mode=opts.search_mode,
                      filters=opts.filters, db=db)
    return [{**h, "index": i} for i, h in enumerate(hits, start=1)]


def grounded_messages(messages: list[dict], passages: list[dict]) -> list[dict]:
    """The request's messages with one system message first: instructions, then the numbered passages."""
    context = "\n\n".join(f"[{p['index']}] {p['text']}" for p in passages)
    own = [m["content"] for m in messages if m["role"] == "system" and m["content"]]
    system = "\n\n".join([*own, SYSTEM_PROMPT, "Passages:\n" + context])
    return [{"role": "system", "content": system}, *(m for m in messages if m["role"] != "system")]


def fit_prompt(tokenizer, messages: list[dict], passages: list[dict], budget: int) -> tuple[list[int], list[dict]]:
    """Prompt ids of at most ``budget`` tokens: drop passages from the end, then cut the last one short.

    A cut passage keeps ``text == document[start:end]`` (its end moves)."""
    kept = list(passages)
    while True:
        ids = render_prompt(tokenizer, grounded_messages(messages, kept))
        over = len(ids) - budget
        if over <= 0:
            return ids, kept
        if not kept:
            raise GraftError(f"the messages alone take {len(ids)} tokens; this model has room for {budget} "
                             "prompt tokens", param="messages", code="context_length_exceeded")
        last = kept[-1]
        spans = tokenizer(last["text"], add_special_tokens=False, split_special_tokens=True,
                          return_offsets_mapping=True)["offset_mapping"]
        keep = len(spans) - over - 4  # a few tokens of slack: text re-tokenizes a little differently
        if keep < 16:  # too little would be left of it: drop it whole
            kept = kept[:-1]
            continue
        cut = spans[keep - 1][1]
        kept[-1] = {**last, "text": last["text"][:cut], "end": last["start"] + cut, "truncated": True}


def grounded_prompt(engine, messages: list[dict], passages: list[dict], *,
                    max_tokens: int | None) -> tuple[list[dict], list[dict]]:
    """The product's RAG prompt as messages, fitted to ``engine``'s context (fit_prompt), and the passages kept.
    For callers that generate through inference.chat_batch (evals, the ladder, graft rag eval)."""
    _, kept = fit_prompt(engine.tokenizer, messages, passages, answer_budget(engine, max_tokens))
    return grounded_messages(messages, kept), kept


def as_passages(texts: list[str]) -> list[dict]:
    """Plain texts as numbered passages (for retrieval that is not a knowledge-base search)."""
    return [{"index": i, "text": t, "start": 0, "end": len(t)} for i, t in enumerate(texts, start=1)]


def citation(p: dict) -> dict:
    return {"index": p["index"], "document_id": p["document_id"], "chunk_id": p["chunk_id"], "start": p["start"],
            "end": p["end"], "text": p["text"], "score": p["score"], "metadata": p.get("metadata") or {}}


CITE_MARK = re.compile(r"\[(\d{1,4}(?:\s*,\s*\d{1,4})*)\]")  # [2], [1, 3], [1,2]


def cite_markers(text: str) -> list[int]:
    """The passage numbers an answer cites with [n] markers, in order of first use."""
    seen: dict[int, None] = {}
    for m in CITE_MARK.finditer(text or ""):
        for n in m.group(1).split(","):
            seen.setdefault(int(n), None)
    return list(seen)


def mark_cited(citations: list[dict], text: str, info: dict) -> list[dict]:
    """Make the answer's [n] markers and the ``citations`` list agree: each citation says whether the text cites
    it (``cited``), and ``info`` (the response's ``rag``) gets ``cited`` (the numbers used that name a passage)
    and ``unknown_citations`` (markers naming no passage in the list)."""
    used = cite_markers(text)
    known = {c["index"] for c in citations}
    for c in citations:
        c["cited"] = c["index"] in used
    info["cited"] = [n for n in used if n in known]
    info["unknown_citations"] = [n for n in used if n not in known]
    return citations


def answer_budget(engine, max_tokens: int | None) -> int:
    """Prompt tokens left once the answer has room (max_tokens, else a quarter of the context, at most 256)."""
    room = max_tokens or min(256, engine.max_seq_len // 4)
    budget = engine.max_seq_len - room
    if budget < 16:
        raise GraftError(f"max_tokens ({max_tokens}) leaves no room for passages in a context of "
                         f"{engine.max_seq_len} tokens", param="max_tokens", code="context_length_exceeded")
    return budget


def sampling(engine, prompt_len: int, *, max_tokens: int | None, temperature: float = 0.0, top_p: float = 1.0,
             top_k: int = 0, stop=None, seed: int | None = None, logprobs: int | None = None) -> SamplingParams:
    room = engine.max_seq_len - prompt_len
    stop = [stop] if isinstance(stop, str) else list(stop or [])
    return SamplingParams(max_tokens=max(1, min(max_tokens or DEFAULT_MAX_TOKENS, room)), temperature=temperature,
                          top_p=top_p, top_k=top_k, stop=stop, seed=seed, logprobs=logprobs)


def run_mode(target, messages: list[dict], passages: list[dict], *, rag_mode: str, max_tokens: int | None,
             retrieve_again=None, **sampling_kw) -> tuple[modes.Answer, list[dict]]:
    """Generate with ``rag_mode``; returns the answer and the passages it cites."""
    engine, tokenizer = target.engine, target.engine.tokenizer
    budget = answer_budget(engine, max_tokens)
    if rag_mode == "stuff":
        ids, kept = fit_prompt(tokenizer, messages, passages, budget)
        return modes.stuff(target, ids, sampling(engine, len(ids), max_tokens=max_tokens, **sampling_kw)), kept
    if rag_mode in ("sequence", "token"):
        fitted = [fit_prompt(tokenizer, messages, [p], budget) for p in passages]
        prompts, kept = [ids for ids, _ in fitted], [k[0] for _, k in fitted if k]
        doc_lp = modes.retrieval_logprobs([p["score"] for p in passages])
        params = sampling(engine, max(map(len, prompts)), max_tokens=max_tokens, **sampling_kw)
        run = modes.sequence if rag_mode == "sequence" else modes.token
        return run(target, prompts, doc_lp, params), kept
    seen = list(passages)  # iterative

    def build_prompt(so_far: str) -> list[int]:
        if so_far.strip() and retrieve_again is not None:
            known = {p["chunk_id"] for p in seen}
            for p in retrieve_again(question_of(messages) + " " + so_far):
                if p["chunk_id"] not in known:
                    seen.append({**p, "index": len(seen) + 1})
                    known.add(p["chunk_id"])
        prefix = text_ids(tokenizer, so_far) if so_far else []
        ids, _ = fit_prompt(tokenizer, messages, seen, budget - len(prefix))
        return ids + prefix

    first = build_prompt("")
    params = sampling(engine, len(first), max_tokens=max_tokens, **sampling_kw)
    return modes.iterative(target, build_prompt, params), seen


def answer(model: str, messages: list[dict], *, max_tokens: int | None = 128, temperature: float = 0.0,
           seed: int | None = None, stop=None, db=None, **options) -> dict:
    """Embedded RAG: {"text", "finish_reason", "citations", "usage", "rag"}. ``options`` are RagOptions
    (knowledge_base_id, passages, search_mode, rag_mode, filters)."""
    from graftlm.clusters.hosting import get_runtime

    opts = RagOptions.parse(options)
    target = get_runtime().resolve(model)
    question = question_of(messages)
    passages = retrieve(opts, question, db=db)
    ans, cited = run_mode(target, messages, passages, rag_mode=opts.rag_mode, max_tokens=max_tokens,
                          retrieve_again=lambda q: retrieve(opts, q, db=db), temperature=temperature, seed=seed,
                          stop=stop)
    info = rag_info(opts, ans)
    return {"text": ans.text, "finish_reason": ans.finish_reason,
            "citations": mark_cited([citation(p) for p in cited], ans.text, info),
            "usage": _usage(ans.prompt_tokens, ans.completion_tokens), "rag": info}


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def rag_info(opts: RagOptions, ans: modes.Answer | None) -> dict:
    return {"knowledge_base_id": opts.knowledge_base_id, "rag_mode": opts.rag_mode, "search_mode": opts.search_mode,
            "passages": opts.passages, **(ans.details if ans is not None else {})}
