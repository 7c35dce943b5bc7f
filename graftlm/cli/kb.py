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
from graftlm.rag import evaluation, metrics
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
    rows = evaluation.load_questions(questions)
    judgments = metrics.load_qrels(qrels) if qrels else None
    report = evaluation.evaluate(kb, rows, modes=[m.strip() for m in modes.split(",") if m.strip()], qrels=judgments,
                      model=model, judge_model=judge_model, top_k=top_k)
    cols = evaluation.columns(report)
    table = Table("mode", *(n for _, n in cols), "s/query", title=f"RAG eval ({report['questions']} questions)")
    for spec, row in report["modes"].items():
        table.add_row(spec, *(evaluation.fmt(row.get(g, {}).get(n)) for g, n in cols), f"{row['search_s_per_query']:.3f}")
    console.print(table)
    if not cols:
        console.print("no relevance judgments (--qrels or \"relevant\") and no --model: only timings reported")
    out = out or Path(f"rag-eval-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(evaluation.markdown(report))
    console.print(f"wrote {out / 'report.json'} and {out / 'report.md'}")
