"""The customization ladder: zero-shot → few-shot → RAG → fine-tuned (per method) → fine-tuned + RAG,
on one eval set, each rung scored with a bootstrap CI, its tokens, latency, training unit-hours and cost.

On a classification set (label_accuracy, a small set of labels) two constrained rungs stand beside the
prompt-only ones: zero-shot+schema and few-shot+schema answer through a ``json_schema`` whose one field is an
enum of the training labels, so every answer is a valid label; each rung also reports the share of its answers
that are a valid label, so the table shows what constraining buys.

Fine-tuning jobs are submitted first, so they train while the prompt-only rungs are evaluated.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from graftlm.evals import prompts as P
from graftlm.evals.run import compare_runs, label_schema, run_eval

MAX_LABELS = 500  # more distinct training answers than this: not a classification set, no constrained rungs
LABEL_FIELD = "label"


def label_set(train: list[dict], scorer: str) -> list[str] | None:
    """The training set's labels when it is a classification set scored by label_accuracy (short one-line
    answers, 2 to MAX_LABELS of them), else None."""
    labels = sorted({str(e["reference"]).strip() for e in train})
    if scorer != "label_accuracy" or not 2 <= len(labels) <= MAX_LABELS:
        return None
    if any(not label or "\n" in label or len(label) > 80 for label in labels):
        return None
    return labels


def schema_max_tokens(labels: list[str], field: str = LABEL_FIELD) -> int:
    """Tokens the longest constrained answer {"field": "label"} may take, plus the end token: its bytes (a model
    may spell it a byte a token, whatever the tokenizer's own split is; the grammar stops it at the end)."""
    return 2 + max(len(json.dumps({field: label}).encode()) for label in labels)  # xgrammar writes ": "


def training_unit_hours(job: dict, events: list[dict], units: int = 1) -> tuple[float, float]:
    """(billed unit-hours = max(1, units × training hours), training seconds) from the job's events:
    training time runs from its first event after queueing to its end."""
    times = [e["created_at"] for e in events]
    start = min(times) if times else job["created_at"]
    seconds = max(0.0, float((job["finished_at"] or time.time()) - start))
    return max(1.0, units * seconds / 3600), seconds


def loss_curve(events: list[dict]) -> list[dict]:
    return [{k: e["data"].get(k) for k in ("step", "train_loss", "valid_loss")}
            for e in events if e.get("type") == "metrics" and e.get("data")]


def _rung(name: str, run: dict, unit_hours: float, price: float, **extra) -> dict:
    tokens = run["tokens"]["prompt"] + run["tokens"]["completion"]
    return {"name": name, "model": run["model"], "score": run["score"], "ci_low": run["ci_low"], "ci_high": run["ci_high"],
            "n": run["n"], "tokens": tokens, "latency_ms": run["latency_ms"], "unit_hours": unit_hours,
            "cost": unit_hours * price, "eval_run_id": run["id"], **extra}


NOTHING_WORKS = 0.05  # every rung at or below this: no recommendation


def verdict(rungs: list[dict], runs: dict[str, dict]) -> dict:
    """The best rung, and for each cheaper rung whether the best is better beyond doubt: its CI above the
    cheaper rung's CI (non-overlapping) and the paired-bootstrap difference on the same examples.
    When every rung scores at most ``NOTHING_WORKS`` nothing is recommended."""
    best = max(rungs, key=lambda r: (r["score"], -r["unit_hours"], -r["tokens"]))
    if best["score"] <= NOTHING_WORKS:
        return {"best": best["name"], "worth_it": False, "checks": [], "recommended": None, "nothing_works": True,
                "text": f"Nothing works yet: every rung scores at most {NOTHING_WORKS:.2f} (best: {best['name']} "
                        f"{best['score']:.3f}). Check the prompt format, the scorer and the eval references "
                        "before choosing a rung."}
    cheaper = [r for r in rungs if r is not best and (r["unit_hours"], r["tokens"]) <= (best["unit_hours"], best["tokens"])]
    checks = []
    for r in cheaper:
        d = compare_runs(runs[r["name"]], runs[best["name"]])
        checks.append({"rung": r["name"], "ci_above": best["ci_low"] > r["ci_high"], "diff": d["diff"],
                       "diff_ci": [d["ci_low"], d["ci_high"]], "significant": d["significant"] and d["diff"] > 0})
    worth = all(c["significant"] for c in checks)
    ties = [c["rung"] for c in checks if not c["significant"]]
    cheapest_tie = min((r for r in rungs if r["name"] in ties), key=lambda r: (r["unit_hours"], r["tokens"]), default=None)
    if worth:
        text = f"{best['name']} is worth it: its score is significantly above every cheaper rung (paired bootstrap, 95%)."
    else:
        text = (f"{best['name']} scores best, but is not significantly better than {', '.join(ties)}; "
                f"the cheaper {cheapest_tie['name']} is the better buy.")
    return {"best": best["name"], "worth_it": worth, "checks": checks, "recommended": best["name"] if worth else
            cheapest_tie["name"], "nothing_works": False, "text": text}


def format_table(rungs: list[dict]) -> str:
    valid = any("valid_label_share" in r for r in rungs)
    head = (f"{'rung':<17} {'score':>6} {'95% CI':>15} " + (f"{'valid':>6} " if valid else "")
            + f"{'tokens':>8} {'latency ms':>11} {'unit-h':>7} {'cost':>7}")
    lines = [head, "-" * len(head)]
    for r in rungs:
        ci = f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
        share = (f"{r['valid_label_share']:>6.1%} " if "valid_label_share" in r else f"{'':>6} ") if valid else ""
        lines.append(f"{r['name']:<17} {r['score']:>6.3f} {ci:>15} {share}"
                     f"{r['tokens']:>8.0f} {r['latency_ms']:>11.1f} {r['unit_hours']:>7.2f} {r['cost']:>7.2f}")
    return "\n".join(lines)


def reused_rungs(custom_models, base_model: str) -> list[tuple[str, dict]]:
    """(rung name, model) for custom models the user already trained, checked against the ladder's base model.
    A rung is named by the model's suffix (``ft:base:SUFFIX:job``), made unique."""
    from graftlm.errors import GraftError
    from graftlm.models.catalog import get_model

    out, names = [], set()
    for model_id in custom_models:
        m = get_model(model_id)
        if m["kind"] != "custom":
            raise GraftError(f"{model_id} is a base model; --reuse takes custom models (ft:…) of {base_model}",
                             param="custom_models")
        if m["parent"] != base_model:
            raise GraftError(f"{model_id} is built on {m['parent']}, not on the ladder's base model {base_model}",
                             param="custom_models")
        parts = model_id.split(":")
        name = parts[2] if len(parts) >= 4 and parts[0] == "ft" else model_id
        if len(parts) > 4:  # a checkpoint: ft:base:suffix:job:ckpt-step-N
            name = f"{name}:{parts[-1]}"
        while name in names:
            name += "'"
        names.add(name)
        out.append((name, m))
    return out


def run_ladder(train_path: str | Path, eval_path: str | Path, base_model: str, *, methods=("tfew", "lora"),
               custom_models=(),
               out_dir: str | Path = "ladder-out", kb_id: str | None = None, few_shot_k: int = 4, rag_k: int = 4,
               shot_selection: str = "similar", max_eval: int | None = None, scorer: str = "label_accuracy",
               max_tokens: int = 16, price_per_unit_hour: float = 1.0, units: int = 1,
               training_duration: str = "2ep", timeout: float = 3600, echo=print, constrained: bool | None = None,
               **training) -> dict:
    """Run every rung, print the table, write ``out_dir/ladder.json`` and ``out_dir/report.html``.

    ``training`` holds extra fine-tuning hyperparameters (learning_rate, training_batch_size, context_length,
    ...). RAG retrieves from ``kb_id`` when given, else from the training examples. Jobs run on this machine.
    ``custom_models`` are custom models already trained (ids, checkpoints too): each gets a rung and a +rag rung
    without training again, billed with its own job's training unit-hours when that job is known.
    ``constrained`` adds the zero-shot+schema and few-shot+schema rungs (default: when the set is a
    classification set, ``label_set``); True on a set that is not one is an error.
    """
    from graftlm.evals.report import write_report
    from graftlm.files.service import upload_local
    from graftlm.jobs import embedded
    from graftlm.errors import NotFound
    from graftlm.jobs.service import create_job, get_job

    reused = reused_rungs(custom_models, base_model)  # checked before anything trains
    train = P.load_examples(train_path)
    labels = label_set(train, scorer)
    if constrained and labels is None:
        from graftlm.errors import GraftError

        raise GraftError(f"constrained rungs need a classification set scored by label_accuracy (2 to {MAX_LABELS} "
                         "one-line labels among the training answers)", param="constrained")
    constrained = labels is not None if constrained is None else constrained
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    train_file = upload_local(train_path, param="train_path")
    jobs = {m: create_job(model=base_model, training_file=train_file, suffix=f"ladder-{m}",
                          hyperparameters={"training_method": m, "training_duration": training_duration, **training})
            for m in methods}
    embedded.ensure_scheduler()
    index = P.ExampleIndex(train)
    examples = P.load_examples(eval_path, max_eval)
    common = dict(scorers=[scorer], max_tokens=max_tokens, save=False)
    runs: dict[str, dict] = {}
    rungs: list[dict] = []

    def add(name: str, model: str, strategy: str, unit_hours: float = 0.0, schema: dict | None = None, **extra):
        echo(f"[ladder] evaluating {name} ({len(examples)} examples)")
        kw = dict(common, labels=labels) if labels is not None else dict(common)
        if schema is not None:
            kw |= {"json_schema": schema, "answer_field": LABEL_FIELD,
                   "max_tokens": max(max_tokens, schema_max_tokens(labels))}
        runs[name] = run_eval(model, examples, strategy=strategy, k=rag_k if strategy == "rag" else few_shot_k,
                              index=index, kb_id=kb_id, shot_selection=shot_selection, **kw)
        if labels is not None:
            extra["valid_label_share"] = runs[name]["valid_label_share"]
        rungs.append(_rung(name, runs[name], unit_hours, price_per_unit_hour, **extra))

    add("zero-shot", base_model, "zero-shot")
    add("few-shot", base_model, "few-shot")
    if constrained:
        schema = label_schema(labels, LABEL_FIELD)
        add("zero-shot+schema", base_model, "zero-shot", schema=schema, constrained=True)
        add("few-shot+schema", base_model, "few-shot", schema=schema, constrained=True)
    add("rag", base_model, "rag")
    curves = {}
    for method, job in jobs.items():
        echo(f"[ladder] waiting for {method} fine-tuning ({job['id']})")
        done = embedded.wait_for_job(job["id"], timeout=timeout)
        if done["status"] != "succeeded":
            echo(f"[ladder] {method} fine-tuning {done['status']}: {done['error']}")
            continue
        events = embedded.events_oldest_first(done["id"])
        curves[method] = loss_curve(events)
        uh, secs = training_unit_hours(done, events, units)
        tuned = done["fine_tuned_model"]
        add(method, tuned, "zero-shot", uh, job_id=done["id"], training_seconds=secs)
        add(f"{method}+rag", tuned, "rag", uh, job_id=done["id"], training_seconds=secs)
    for name, model in reused:
        job_id = (model.get("lineage") or {}).get("job_id")
        uh, secs, extra = 0.0, None, {"reused": True}
        if job_id:
            try:
                job = get_job(job_id)
            except NotFound:  # its job is gone (or the model came from elsewhere): no training cost known
                job = None
            if job is not None:
                events = embedded.events_oldest_first(job_id)
                uh, secs = training_unit_hours(job, events, units)
                curves.setdefault(name, loss_curve(events))
                extra |= {"job_id": job_id, "training_seconds": secs}
        echo(f"[ladder] reusing {model['id']} as rung {name} (no training)")
        add(name, model["id"], "zero-shot", uh, **extra)
        add(f"{name}+rag", model["id"], "rag", uh, **extra)
    decision = verdict(rungs, runs)
    result = {"base_model": base_model, "train_path": str(train_path), "eval_path": str(eval_path),
              "n_eval": len(examples), "scorer": scorer, "few_shot_k": few_shot_k, "rag_k": rag_k,
              "rag_source": kb_id or "training examples", "price_per_unit_hour": price_per_unit_hour,
              "labels": labels,
              "rungs": rungs, "verdict": decision, "loss_curves": curves, "wall_s": time.time() - started}
    (out_dir / "ladder.json").write_text(json.dumps(result, indent=1))
    (out_dir / "runs.json").write_text(json.dumps(runs, indent=1, default=str))
    write_report(result, out_dir / "report.html")
    echo(format_table(rungs))
    echo(decision["text"])
    return result
