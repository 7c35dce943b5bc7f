"""`graft rag eval`: retrieval metrics per search mode and, with a model, RAGAS metrics of its grounded answers
(the product's prompt, fitted like the API's). Plain data in and out; the CLI prints it."""

from __future__ import annotations

import time
from pathlib import Path

from graftlm import rag
from graftlm.errors import GraftError
from graftlm.rag import metrics, ragas
from graftlm.rag.loaders import jsonl_rows


def load_questions(path: Path) -> list[dict]:
    """{id, question, answer?, relevant?: [doc ids]} per line."""
    path, rows = Path(path), []
    for lineno, row in jsonl_rows(path.name, path.read_text()):
        if not isinstance(row, dict) or not isinstance(row.get("question"), str) or not row["question"].strip():
            raise GraftError(f"{path.name} line {lineno}: field \"question\" must be a non-empty string")
        rows.append({"id": str(row.get("id", lineno)), "question": row["question"], "answer": row.get("answer"),
                     "relevant": [str(d) for d in row.get("relevant") or []]})
    if not rows:
        raise GraftError(f"{path.name}: no questions")
    return rows


def parse_mode(spec: str) -> tuple[str, dict]:
    """"hybrid", "hybrid+rerank" (default ranker), "dense+mmr", "hybrid+llm:<model>" -> (mode, search kwargs)."""
    mode, _, second = spec.partition("+")
    if mode not in rag.MODES:
        raise GraftError(f"mode {spec!r}: the first part must be one of {', '.join(rag.MODES)}", param="modes")
    if not second:
        return mode, {}
    return mode, {"rerank": True, "ranker": None if second == "rerank" else second}


def evaluate(kb: str, questions: list[dict], *, modes: list[str], qrels: dict | None = None, model: str | None = None,
             judge_model: str | None = None, top_k: int = 10, context_k: int = 4) -> dict:
    """Retrieval metrics per mode (when judgments exist) and, with a model, RAGAS metrics of its answers."""
    from graftlm.rag.generate import grounded_prompt

    kb_obj = rag.get_kb(kb)
    qrels = qrels or {q["id"]: {d: 1.0 for d in q["relevant"]} for q in questions if q["relevant"]}
    results = {}
    for spec in modes:
        mode, kw = parse_mode(spec)
        started = time.perf_counter()
        hits = {q["id"]: rag.search(kb_obj, q["question"], top_k=top_k, mode=mode, **kw) for q in questions}
        row = {"search_s_per_query": (time.perf_counter() - started) / len(questions)}
        judged = {q: r for q, r in qrels.items() if q in hits}
        if judged:
            run = {q: [h["document_id"] for h in hits[q]] for q in judged}
            row["retrieval"] = metrics.evaluate(run, judged, k=min(10, top_k), recall_k=top_k)
        if model:
            from graftlm.clusters.hosting import get_runtime
            from graftlm.inference.service import chat_batch

            engine = get_runtime().resolve(model).engine
            passages = {q: [{**h, "index": i} for i, h in enumerate(hits[q][:context_k], start=1)] for q in hits}
            fitted = {q["id"]: grounded_prompt(engine, [{"role": "user", "content": q["question"]}], passages[q["id"]],
                                               max_tokens=128) for q in questions}
            passages = {q: kept for q, (_, kept) in fitted.items()}  # RAGAS judges the passages the model saw
            asks = [(model, fitted[q["id"]][0]) for q in questions]
            answers = [o["text"] for o in chat_batch(asks, max_tokens=128)]
            rows = [{"question": q["question"], "answer": a, "contexts": [p["text"] for p in passages[q["id"]]],
                     "reference": q["answer"]} for q, a in zip(questions, answers)]
            scored = ragas.evaluate(rows, ragas.chat_judge(judge_model or model),
                                    ragas.embedder(kb_obj.embedding_model))
            row["generation"] = scored["mean"]
            row["answers"] = [{"id": q["id"], "answer": a, **s}
                              for q, a, s in zip(questions, answers, scored["per_question"])]
        results[spec] = row
    return {"knowledge_base": kb_obj.id, "questions": len(questions), "model": model,
            "judge_model": judge_model or model, "top_k": top_k, "modes": results}


def columns(report: dict) -> list[tuple[str, str]]:
    cols = []
    for row in report["modes"].values():
        for group in ("retrieval", "generation"):
            for name in row.get(group, {}):
                if (group, name) not in cols:
                    cols.append((group, name))
    return cols


def fmt(v) -> str:
    return "-" if v is None else f"{v:.4f}"


def markdown(report: dict) -> str:
    cols = columns(report)
    lines = [f"# RAG evaluation: {report['questions']} questions, knowledge base {report['knowledge_base']}", "",
             f"model: {report['model'] or '-'}, judge: {report['judge_model'] or '-'}, top_k: {report['top_k']}", "",
             "| mode | " + " | ".join(n for _, n in cols) + " | s/query |",
             "|---" * (len(cols) + 2) + "|"]
    for spec, row in report["modes"].items():
        cells = [fmt(row.get(g, {}).get(n)) for g, n in cols]
        lines.append(f"| {spec} | " + " | ".join(cells) + f" | {row['search_s_per_query']:.3f} |")
    return "\n".join(lines) + "\n"
