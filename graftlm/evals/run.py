"""Run a model over an eval set: build prompts (zero-shot, few-shot, RAG), generate all examples in one
``chat_batch``, score, and store per-example results with bootstrap-CI aggregates.

Latency is the batch's wall time divided by its examples (amortized, what batched serving costs per
answer); tokens are the engine's prompt + completion counts.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from graftlm.errors import GraftError
from graftlm.evals import prompts as P
from graftlm.evals import scorers as S
from graftlm.evals import store
from graftlm.evals.stats import bootstrap_ci, summarize

STRATEGIES = ("zero-shot", "few-shot", "rag")


def model_context(model: str) -> tuple[object, int]:
    """(tokenizer, max tokens per sequence) of the engine that serves ``model``."""
    from graftlm.clusters.hosting import get_runtime

    engine = get_runtime().resolve(model).engine
    return engine.tokenizer, engine.max_seq_len


def token_counter(tokenizer):
    from graftlm.data.render import render_prompt

    return lambda messages: len(render_prompt(tokenizer, messages))


def retrieve_passages(queries: list[str], k: int, *, kb_id: str | None = None, index: P.ExampleIndex | None = None,
                      mode: str = "hybrid") -> list[list[str]]:
    """Top-k passages per query: chunks of a knowledge base, or similar training examples as text."""
    if kb_id:
        from graftlm.rag import search

        return [[h["text"] for h in search(kb_id, q, top_k=k, mode=mode)] for q in queries]
    if index is None:
        raise GraftError("RAG needs a knowledge base (kb_id) or training examples (train_path)", param="kb_id")
    return [[f"Request: {P.question(e['messages'])}\nAnswer: {e['reference']}" for e in hits]
            for hits in index.nearest(queries, k)]


def build_prompts(model: str, examples: list[dict], strategy: str = "zero-shot", *, k: int = 4,
                  index: P.ExampleIndex | None = None, kb_id: str | None = None, shot_selection: str = "similar",
                  max_tokens: int = 32, seed: int = 0) -> list[list[dict]]:
    """Messages per example; few-shot and RAG prompts keep as many shots/passages as fit the context."""
    if strategy not in STRATEGIES:
        raise GraftError(f"strategy must be one of {', '.join(STRATEGIES)}", param="strategy")
    if strategy == "zero-shot" or k <= 0:
        return [e["messages"] for e in examples]
    tokenizer, context = model_context(model)
    count, budget = token_counter(tokenizer), context - max_tokens - 8
    queries = [P.question(e["messages"]) for e in examples]
    if strategy == "few-shot":
        if index is None:
            raise GraftError("few-shot needs training examples (train_path)", param="train_path")
        shots = index.nearest(queries, k) if shot_selection == "similar" else index.random(len(examples), k, seed)
        return [P.fit(lambda s, e=e: P.with_shots(e["messages"], s[::-1]), sh, count, budget)  # most similar last
                for e, sh in zip(examples, shots)]
    from graftlm.clusters.hosting import get_runtime
    from graftlm.rag.generate import as_passages, grounded_prompt

    engine = get_runtime().resolve(model).engine  # the same RAG prompt the product serves
    passages = retrieve_passages(queries, k, kb_id=kb_id, index=index)
    return [grounded_prompt(engine, e["messages"], as_passages(ps), max_tokens=max_tokens)[0]
            for e, ps in zip(examples, passages)]


def generate(model: str, prompt_list: list[list[dict]], *, max_tokens: int = 32, stop=None,
             json_schema: dict | None = None) -> tuple[list[dict], float]:
    """All prompts in one chat_batch (each answer constrained to ``json_schema`` when given); returns
    (outputs, wall seconds)."""
    from graftlm.inference.service import chat_batch

    start = time.perf_counter()
    outs = chat_batch([(model, m) for m in prompt_list], max_tokens=max_tokens, temperature=0.0, stop=stop,
                      json_schema=json_schema)
    return outs, time.perf_counter() - start


def label_schema(labels: list[str], field: str = "label") -> dict:
    """A JSON schema whose one field is an enum of ``labels``: a constrained answer is always a label."""
    return {"type": "object", "properties": {field: {"type": "string", "enum": list(labels)}},
            "required": [field], "additionalProperties": False}


def answer_of(text: str, field: str) -> str:
    """The string value of ``field`` in a JSON answer, or "" when the answer is not such an object."""
    try:
        value = json.loads(text)
    except ValueError:
        return ""
    value = value.get(field) if isinstance(value, dict) else None
    return value if isinstance(value, str) else ""


def is_label(prediction: str, labels) -> bool:
    """Whether the answer reads as one of ``labels`` by the label_accuracy rule (a valid label, right or not)."""
    return any(S.label_accuracy(prediction, label) == 1.0 for label in labels)


def score_outputs(predictions: list[str], references: list, scorers: list[str], options: dict | None = None,
                  questions: list[str] | None = None) -> dict:
    options = options or {}
    return {name: S.score(name, predictions, references, questions=questions, **options.get(name, {}))
            for name in scorers}


def run_eval(model: str, data: str | Path | list[dict], *, scorers=("label_accuracy",), strategy: str = "zero-shot",
             k: int = 4, train_path: str | None = None, kb_id: str | None = None, shot_selection: str = "similar",
             max_examples: int | None = None, max_tokens: int = 32, stop=None, scorer_options: dict | None = None,
             eval_id: str | None = None, name: str | None = None, save: bool = True, index=None,
             seed: int = 0, failures: bool = False, json_schema: dict | None = None,
             answer_field: str | None = None, labels=None) -> dict:
    """Evaluate ``model`` on ``data`` (JSONL path or loaded examples). Returns the run record:

    {"id", "eval_id", "model", "strategy", "n", "score", "ci_low", "ci_high" (first scorer),
     "aggregates": {scorer: {"mean", "ci_low", "ci_high", "n"}}, "tokens": {"prompt", "completion"} (means),
     "latency_ms" (amortized per example), "wall_s", "results": [per example]}
    With ``failures``, also "failure_clusters": the failed examples grouped (graftlm.evals.failures).
    ``json_schema`` constrains every answer (structured outputs); ``answer_field`` scores that field of the JSON
    answer (the raw answer stays in each result's "output"). With ``labels``, "valid_label_share": the share of
    answers that read as one of them.
    Stored in the control-plane store (eval_runs) when ``save``.
    """
    scorers = list(scorers)
    for name in scorers:  # fail before generating, not after
        S.check_scorer(name)
    examples = P.load_examples(data, max_examples) if not isinstance(data, list) else data[:max_examples]
    if not examples:
        raise GraftError("the eval set has no examples", param="data")
    if index is None and strategy != "zero-shot" and train_path and not (strategy == "rag" and kb_id):
        index = P.ExampleIndex(P.load_examples(train_path))
    prompt_list = build_prompts(model, examples, strategy, k=k, index=index, kb_id=kb_id,
                                shot_selection=shot_selection, max_tokens=max_tokens, seed=seed)
    outs, wall = generate(model, prompt_list, max_tokens=max_tokens, stop=stop, json_schema=json_schema)
    preds, refs = [o["text"] for o in outs], [e["reference"] for e in examples]
    if answer_field:
        preds = [answer_of(p, answer_field) for p in preds]
    per = score_outputs(preds, refs, scorers, scorer_options, [P.question(e["messages"]) for e in examples])
    results = [{"id": e["id"], "question": P.question(e["messages"]), "reference": e["reference"], "prediction": p,
                "scores": {s: per[s][i] for s in scorers}, "prompt_tokens": o["prompt_tokens"],
                "completion_tokens": o["completion_tokens"], "finish_reason": o["finish_reason"],
                "shots_or_passages": len(pm) - len(e["messages"]) if strategy == "few-shot" else None}
               for i, (e, p, o, pm) in enumerate(zip(examples, preds, outs, prompt_list))]
    if answer_field:
        for r, o in zip(results, outs):
            r["output"] = o["text"]
    if labels is not None:
        for r in results:
            r["valid_label"] = is_label(r["prediction"], labels)
    aggregates = {s: summarize(per[s], seed=seed) for s in scorers}
    first = aggregates[scorers[0]]
    run = {"id": store.new_id("evalrun"), "object": "eval.run", "eval_id": eval_id, "name": name, "model": model,
           "strategy": strategy, "k": k if strategy != "zero-shot" else 0, "kb_id": kb_id,
           "data": str(data) if not isinstance(data, list) else None, "scorers": scorers,
           "created_at": int(time.time()), "n": len(examples),
           "score": first["mean"], "ci_low": first["ci_low"], "ci_high": first["ci_high"], "aggregates": aggregates,
           "tokens": {"prompt": float(np.mean([o["prompt_tokens"] for o in outs])),
                      "completion": float(np.mean([o["completion_tokens"] for o in outs]))},
           "latency_ms": 1000 * wall / len(examples), "wall_s": wall, "results": results}
    if json_schema is not None:
        run["json_schema"] = json_schema
    if labels is not None:
        run["valid_label_share"] = float(np.mean([r["valid_label"] for r in results]))
    if failures:
        from graftlm.evals.failures import cluster_failures, failed_results

        run["failure_clusters"] = cluster_failures(failed_results(run), seed=seed)
    if save:
        if eval_id is None:
            ev = store.create_eval(name or Path(str(data)).stem if not isinstance(data, list) else (name or "adhoc"),
                                   str(data), scorers)
            run["eval_id"] = eval_id = ev["id"]
        store.save_run(eval_id, run)
    return run


def compare_runs(a: dict, b: dict, scorer: str | None = None, *, n_resamples: int = 2000, seed: int = 0) -> dict:
    """Paired bootstrap of b − a over the examples both runs share (matched by id)."""
    scorer = scorer or a["scorers"][0]
    sa = {r["id"]: r["scores"][scorer] for r in a["results"]}
    pairs = [(sa[r["id"]], r["scores"][scorer]) for r in b["results"] if r["id"] in sa]
    if not pairs:
        raise GraftError("the two runs share no examples", param="runs")
    diff = [y - x for x, y in pairs]
    mean, low, high = bootstrap_ci(diff, n_resamples=n_resamples, seed=seed)
    return {"scorer": scorer, "n": len(pairs), "a": a["id"], "b": b["id"], "a_mean": float(np.mean([x for x, _ in pairs])),
            "b_mean": float(np.mean([y for _, y in pairs])), "diff": mean, "ci_low": low, "ci_high": high,
            "significant": bool(low > 0 or high < 0)}
