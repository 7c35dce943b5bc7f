"""From an endpoint's request logs and their feedback to training data (`graft data from-logs`).

Only rated chat completions are used (a text completion or an unrated one is counted and skipped). Per prompt
(the same messages, by their hash): the *good* answers are the corrections and the answers scored at least
``min_rating`` (1-5; thumbs up is 5), the *bad* ones are the answers scored at most ``max_bad_rating`` (thumbs
down is 1) and an answer that received a correction. Out come

- SFT examples (chat format): the prompt with each good answer;
- preference pairs (OpenAI's DPO JSONL): each good answer preferred over each bad answer of the same prompt;

deduplicated, optionally filtered by an LLM judge (the ``judge:<model>`` scorer's pointwise 1-5 grade of the good
answer, kept at ``judge_min`` or above), and validated by the same validator as uploads. ``variants`` > 0 also
writes ``sft_variants.jsonl``: paraphrases of the SFT prompts with the same good answers, from the synth code
(``graftlm.evals.synth.from_queries``: a model rewrites each query; duplicates and odd lengths are dropped).
"""

from __future__ import annotations

import json
from pathlib import Path

from graftlm.data.validate import validate_file
from graftlm.errors import GraftError
from graftlm.observe import logs


def build(endpoint_id: str, *, since: int | None = None, min_rating: float = 4.0, max_bad_rating: float = 2.0,
          judge=None, judge_min: int = 4) -> dict:
    """``{"sft": [chat lines], "preference": [DPO lines], "stats": {...}}`` from one endpoint's logs."""
    if not 1 <= max_bad_rating < min_rating <= 5:
        raise GraftError("need 1 <= max_bad_rating < min_rating <= 5", param="min_rating")
    stats = {"logged": 0, "rated": 0, "skipped_text": 0, "good": 0, "bad": 0}
    prompts: dict[str, dict] = {}
    for r in logs.iter_logs(endpoint_id, since):
        stats["logged"] += 1
        request, fb = r.get("request") or {}, r["feedback"]
        if r["kind"] != "chat" or not request.get("messages"):
            stats["skipped_text"] += 1
            continue
        if fb is None:
            continue
        stats["rated"] += 1
        answer = ((r.get("response") or {}).get("choices") or [{}])[0].get("text", "")
        group = prompts.setdefault(r["prompt_sha256"], {"messages": request["messages"], "good": [], "bad": []})
        if fb.get("correction"):
            group["good"].append(fb["correction"])
            if answer.strip() != fb["correction"].strip():
                group["bad"].append(answer)
        elif fb["score"] >= min_rating:
            group["good"].append(answer)
        elif fb["score"] <= max_bad_rating:
            group["bad"].append(answer)
    sft, pairs = [], []
    for group in prompts.values():
        good = unique(a for a in group["good"] if a.strip())
        bad = unique(a for a in group["bad"] if a.strip())
        stats["good"] += len(good)
        stats["bad"] += len(bad)
        if judge is not None and good:
            good = judged(group["messages"], good, judge, judge_min)
        messages = [{"role": m["role"], "content": m["content"]} for m in group["messages"]]
        for a in good:
            sft.append({"messages": messages + [{"role": "assistant", "content": a}]})
            for b in bad:
                if b != a:
                    pairs.append({"input": {"messages": messages},
                                  "preferred_output": [{"role": "assistant", "content": a}],
                                  "non_preferred_output": [{"role": "assistant", "content": b}]})
    stats |= {"prompts": len(prompts), "sft_examples": len(sft), "preference_pairs": len(pairs)}
    return {"sft": sft, "preference": pairs, "stats": stats}


def unique(items) -> list[str]:
    seen, out = set(), []
    for a in items:
        if a.strip() not in seen:
            seen.add(a.strip())
            out.append(a)
    return out


def judged(messages: list[dict], answers: list[str], judge, judge_min: int) -> list[str]:
    from graftlm.evals.judge import judge_model_of, judge_pointwise

    if isinstance(judge, str):
        judge = judge_model_of(judge) or judge
    question = messages[-1]["content"]
    grades = judge_pointwise([{"question": question, "answer": a} for a in answers], judge)
    return [a for a, g in zip(answers, grades) if g["score"] is not None and g["score"] >= judge_min]


def write(result: dict, out_dir: str | Path, *, variants: int = 0, variants_model: str | None = None,
          generator=None) -> dict:
    """Write ``sft.jsonl`` and ``preference.jsonl`` (each only when it has lines), and with ``variants``
    ``sft_variants.jsonl``; validate them."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    sets = [("sft", result["sft"], "chat"), ("preference", result["preference"], "preference")]
    (out / "sft_variants.jsonl").unlink(missing_ok=True)
    if variants and result["sft"]:
        from graftlm.evals.synth import from_queries

        queries = out / ".queries.jsonl"
        queries.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in result["sft"]))
        raw = out / ".variants.jsonl"
        from_queries(queries, raw, model=variants_model, generator=generator, variants=variants)
        lines = [json.loads(x) for x in raw.read_text().splitlines() if x.strip()]
        queries.unlink()
        raw.unlink()
        sets.append(("sft_variants", [{"messages": r["messages"]} for r in lines if "messages" in r], "chat"))
    for name, rows, fmt in sets:
        path = out / f"{name}.jsonl"
        path.unlink(missing_ok=True)
        if not rows:
            continue
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        report = validate_file(path, fmt=fmt)
        if not report["valid"]:  # built here, so a failure is a bug: say which line
            e = report["errors"][0]
            raise GraftError(f"{path.name}: line {e['line']}: {e['field']}: {e['message']}", param="out")
        written[name] = {"path": str(path), "format": fmt, "examples": len(rows)}
    return written
