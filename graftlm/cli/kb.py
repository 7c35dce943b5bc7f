"""`graft kb create|list|delete|ingest|documents|search` and `graft rag eval`, embedded on GRAFT_HOME (no server)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional
from urllib.parse import quote

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from graftlm import rag
from graftlm.cli.common import console, err_console, friendly_errors, print_json
from graftlm.cli.remote import connect
from graftlm.errors import GraftError
from graftlm.rag import metrics, ragas
from graftlm.rag.backend import METADATA_KEY

app = typer.Typer(no_args_is_help=True)
rag_app = typer.Typer(no_args_is_help=True)


@app.command("create")
@friendly_errors
def create(name: str, chunk_size: int = typer.Option(250, help="tokens per chunk"),
           chunk_overlap: int = typer.Option(32, help="tokens shared by neighbouring chunks"),
           embedding_model: Optional[str] = typer.Option(None, help="default all-MiniLM-L6-v2")):
    """Create a knowledge base (through the running `graft serve` when there is one: it has the embedding model
    loaded already; else here)."""
    server = connect()
    if server is not None:
        kb = server.post("/knowledge_bases", {"name": name, "chunk_size": chunk_size, "chunk_overlap": chunk_overlap,
                                              "embedding_model": embedding_model})
        console.print(f"[green]{kb['name']}[/] created: {kb['id']} ({kb['embedding_model']}, "
                      f"{kb['chunk_size']}-token chunks)")
        err_console.print(f"[dim](created by the server at {server.url})[/]")
        return
    kb = rag.create_kb(name, chunk_size=chunk_size, chunk_overlap=chunk_overlap, embedding_model=embedding_model)
    console.print(f"[green]{kb.name}[/] created: {kb.id} ({kb.embedding_model}, {kb.chunk_size}-token chunks)")


@app.command("list")
@friendly_errors
def list_(as_json: bool = typer.Option(False, "--json")):
    """Knowledge bases with their document and chunk counts."""
    rows = [rag.describe_kb(kb) for kb in rag.list_kbs()]
    if as_json:
        return print_json(rows)
    table = Table("id", "name", "documents", "chunks", "embedding model", "chunk size")
    for r in rows:
        table.add_row(r["id"], r["name"], str(r["documents"]), str(r["chunks"]), r["embedding_model"],
                      f"{r['chunk_size']}/{r['chunk_overlap']}")
    console.print(table)


@app.command("delete")
@friendly_errors
def delete(kb: str):
    """Delete a knowledge base (id or name) and everything in it."""
    found = rag.get_kb(kb)
    rag.delete_kb(found)
    console.print(f"deleted {found.name} ({found.id})")


@app.command("ingest")
@friendly_errors
def ingest(kb: str, paths: list[Path] = typer.Argument(..., help="txt, md, html, pdf or jsonl files"),
           metadata: list[str] = typer.Option([], "--metadata", help="key=value added to every document's "
                                              "metadata (repeatable; search --filters matches it)")):
    """Add files to a knowledge base; a bad file is reported and skipped."""
    extra = parse_metadata(metadata)
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task(f"ingest into {kb}", total=len(paths))
        reports = rag.ingest_files(kb, paths, progress=lambda n, total: bar.update(task, completed=n),
                                   metadata=extra)
    for r in reports:
        if r["ok"]:
            console.print(f"[green]ok[/] {r['path']}: {r['documents']} documents, {r['chunks']} chunks")
        else:
            console.print(f"[red]failed[/] {r['path']}: {r['error']}")
    if not any(r["ok"] for r in reports):
        raise typer.Exit(2)


def parse_metadata(pairs: list[str]) -> dict:
    """['lang=en', 'year=2024'] -> {"lang": "en", "year": 2024}: a value that is a JSON number, true, false
    or null is that (so --filters '{"year": 2024}' matches), anything else the text itself."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not METADATA_KEY.match(key):
            raise GraftError(f"--metadata {pair!r}: use KEY=VALUE, the key letters, digits, '_', '-', '.', ' ' "
                             "(at most 64)", param="--metadata")
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = value
        out[key] = parsed if parsed is None or isinstance(parsed, (bool, int, float)) else value
    return out


@app.command("documents")
@friendly_errors
def documents(kb: str, as_json: bool = typer.Option(False, "--json")):
    """List a knowledge base's documents with their metadata."""
    rows = rag.list_documents(kb)
    if as_json:
        print_json(rows)
        return
    table = Table("id", "chunks", "chars", "metadata")
    for r in rows:
        table.add_row(r["id"], str(r["n_chunks"]), str(r["n_chars"]), json.dumps(r["metadata"]))
    console.print(table)


def parse_json_option(value: str | None, option: str) -> dict | None:
    """A JSON object given on the command line, or a GraftError naming the option."""
    if value is None:
        return None
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as e:
        raise GraftError(f"{option} must be a JSON object, e.g. '{{\"topic\": \"pets\"}}': {e.msg}",
                         param=option) from e
    if not isinstance(parsed, dict):
        raise GraftError(f"{option} must be a JSON object, not {type(parsed).__name__}", param=option)
    return parsed


def parse_weights(value: str | None) -> dict | None:
    """'keyword=2,dense=0.5' or '{"keyword": 2, "dense": 0.5}' -> {"keyword": 2.0, "dense": 0.5}."""
    if value is None or value.strip().startswith("{"):
        return parse_json_option(value, "--weights")
    weights = {}
    for part in filter(None, (p.strip() for p in value.split(","))):
        name, _, number = part.partition("=")
        try:
            weights[name.strip()] = float(number)
        except ValueError:
            raise GraftError(f"--weights: {part!r} is not NAME=NUMBER (e.g. keyword=2,dense=0.5)",
                             param="--weights") from None
    return weights


@app.command("search")
@friendly_errors
def search(kb: str, query: str, top_k: int = typer.Option(5, "--top-k"),
           mode: str = typer.Option("hybrid", help="keyword, dense or hybrid"),
           rerank: bool = typer.Option(False, help="second-stage ranking"),
           ranker: Optional[str] = typer.Option(None, help="cosine, mmr, a cross-encoder, or llm:<model>"),
           filters: Optional[str] = typer.Option(None, help="metadata equality filters as JSON, e.g. "
                                                            "'{\"topic\": \"pets\"}'"),
           rrf_k: int = typer.Option(60, "--rrf-k", help="hybrid: score = sum of weight / (rrf_k + rank)"),
           weights: Optional[str] = typer.Option(None, help="hybrid: list weights, keyword=2,dense=0.5 or JSON"),
           as_json: bool = typer.Option(False, "--json"),
           local: bool = typer.Option(False, "--local", help="search here even when a server runs")):
    """Search a knowledge base (through the running `graft serve` when there is one: its embedding model is
    already loaded; else here)."""
    options = {"top_k": top_k, "mode": mode, "rerank": rerank or ranker is not None, "ranker": ranker,
               "filters": parse_json_option(filters, "--filters"), "rrf_k": rrf_k, "weights": parse_weights(weights)}
    server = connect(local)
    if server is not None:
        hits = server.post(f"/knowledge_bases/{quote(kb, safe='')}/search", {"query": query, **options})["data"]
        hits = [{k: v for k, v in h.items() if k != "object"} for h in hits]
        err_console.print(f"[dim](searched by the server at {server.url})[/]")
    else:
        hits = rag.search(kb, query, **options)
    if as_json:
        return print_json(hits)
    table = Table("#", "score", "document", "chunk", "text")
    for i, h in enumerate(hits, start=1):
        text = " ".join(h["text"].split())
        table.add_row(str(i), f"{h['score']:.4f}", h["document_id"], h["chunk_id"], text[:100])
    console.print(table)


# graft rag eval --------------------------------------------------------------------------------------

def load_questions(path: Path) -> list[dict]:
    rows = []
    for lineno, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise GraftError(f"{path.name} line {lineno}: invalid JSON: {e.msg}") from e
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


def _columns(report: dict) -> list[tuple[str, str]]:
    cols = []
    for row in report["modes"].values():
        for group in ("retrieval", "generation"):
            for name in row.get(group, {}):
                if (group, name) not in cols:
                    cols.append((group, name))
    return cols


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4f}"


def markdown(report: dict) -> str:
    cols = _columns(report)
    lines = [f"# RAG evaluation: {report['questions']} questions, knowledge base {report['knowledge_base']}", "",
             f"model: {report['model'] or '-'}, judge: {report['judge_model'] or '-'}, top_k: {report['top_k']}", "",
             "| mode | " + " | ".join(n for _, n in cols) + " | s/query |",
             "|---" * (len(cols) + 2) + "|"]
    for spec, row in report["modes"].items():
        cells = [_fmt(row.get(g, {}).get(n)) for g, n in cols]
        lines.append(f"| {spec} | " + " | ".join(cells) + f" | {row['search_s_per_query']:.3f} |")
    return "\n".join(lines) + "\n"


@rag_app.command("eval")
@friendly_errors
def eval_(kb: str = typer.Option(..., "--kb", help="knowledge base id or name"),
          questions: Path = typer.Option(..., help="jsonl: {id, question, answer?, relevant?: [doc ids]}"),
          qrels: Optional[Path] = typer.Option(None, help="TREC or CISI relevance judgments (ids = question ids)"),
          modes: str = typer.Option("keyword,dense,hybrid,hybrid+rerank", help="comma list; hybrid+llm:<model> too"),
          model: Optional[str] = typer.Option(None, help="answer with this model and score with RAGAS metrics"),
          judge_model: Optional[str] = typer.Option(None, help="judge for RAGAS metrics (default: --model)"),
          top_k: int = typer.Option(10, "--top-k"),
          out: Optional[Path] = typer.Option(None, help="directory for report.json and report.md")):
    """Retrieval metrics (nDCG@10, recall, precision, MRR) per mode, and RAGAS metrics with --model."""
    rows = load_questions(questions)
    judgments = metrics.load_qrels(qrels) if qrels else None
    report = evaluate(kb, rows, modes=[m.strip() for m in modes.split(",") if m.strip()], qrels=judgments,
                      model=model, judge_model=judge_model, top_k=top_k)
    cols = _columns(report)
    table = Table("mode", *(n for _, n in cols), "s/query", title=f"RAG eval ({report['questions']} questions)")
    for spec, row in report["modes"].items():
        table.add_row(spec, *(_fmt(row.get(g, {}).get(n)) for g, n in cols), f"{row['search_s_per_query']:.3f}")
    console.print(table)
    if not cols:
        console.print("no relevance judgments (--qrels or \"relevant\") and no --model: only timings reported")
    out = out or Path(f"rag-eval-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(markdown(report))
    console.print(f"wrote {out / 'report.json'} and {out / 'report.md'}")
