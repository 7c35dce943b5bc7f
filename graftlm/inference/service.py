"""Embedded inference: many chat requests through the serving engine in one batch, no server needed.

Evaluations, RAG and the demo call this; the HTTP API uses the same runtime and routing.
"""

from __future__ import annotations

from graftlm.clusters.hosting import get_runtime
from graftlm.data.render import render_prompt
from graftlm.serve.sampler import SamplingParams


def chat_batch(requests: list[tuple[str, list[dict]]], *, max_tokens: int = 64, temperature: float = 0.0,
               stop: list[str] | None = None, seed: int | None = None, json_schema: dict | None = None) -> list[dict]:
    """Answer (model name, messages) pairs together. Requests for the same base model, custom or not,
    share one engine and one batch. ``json_schema`` constrains every answer to that schema (structured
    outputs, as ``response_format`` json_schema does for the API). Returns
    [{"text", "finish_reason", "prompt_tokens", "completion_tokens"}]."""
    runtime = get_runtime()
    groups: dict[int, list[tuple[int, object, list[int]]]] = {}
    for i, (model, messages) in enumerate(requests):
        target = runtime.resolve(model)
        ids = render_prompt(target.engine.tokenizer, messages)
        room = target.engine.max_seq_len - len(ids)
        if room < 1:  # keep the end of an over-long prompt (the question is last)
            ids, room = ids[-(target.engine.max_seq_len - max_tokens):], max_tokens
        groups.setdefault(id(target.engine), []).append((i, target, ids))
    results: list[dict] = [{}] * len(requests)
    for rows in groups.values():
        engine = rows[0][1].engine
        grammar = engine.grammars.json_schema(json_schema, "json_schema") if json_schema is not None else None
        params = [SamplingParams(max_tokens=min(max_tokens, engine.max_seq_len - len(ids)), temperature=temperature,
                                 stop=stop or [], seed=seed, grammar=grammar) for _, _, ids in rows]
        outs = engine.generate([(ids, p, t.adapter) for (_, t, ids), p in zip(rows, params)])
        for (i, _, _), out in zip(rows, outs):
            results[i] = {"text": out.text, "finish_reason": out.finish_reason,
                          "prompt_tokens": out.prompt_tokens, "completion_tokens": out.completion_tokens}
    return results
