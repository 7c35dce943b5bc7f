"""graft data validate."""

from __future__ import annotations

from typing import Optional

import typer
from rich.table import Table

from graftlm.cli.common import console, friendly_errors, print_json

app = typer.Typer(no_args_is_help=True)


def load_tokenizer(model_id: str):
    from transformers import AutoTokenizer

    from graftlm.models.catalog import base_model_of

    base = base_model_of(model_id)
    return AutoTokenizer.from_pretrained(base["path"]), base["context_length"]


@app.command("validate")
@friendly_errors
def validate(file: str, model: Optional[str] = typer.Option(None, help="tokenize with this model for token stats"),
             format: Optional[str] = typer.Option(None, "--format", help="prompt_completion|chat|sharegpt|text|preference"),
             epochs: int = typer.Option(3, help="epochs for the training-token estimate"),
             context_length: Optional[int] = typer.Option(None, help="override the model's context length"),
             data_policy: str = typer.Option("warn", "--data-policy",
                                             help="warn: personal data is a warning; reject: it fails the check "
                                                  "(exit 1), as an upload under reject would"),
             json: bool = typer.Option(False, "--json")):
    """Check a JSONL dataset (structure, tokens, personal data); exit 0 when valid, 1 when not."""
    from graftlm.data.validate import validate_file
    from graftlm.errors import GraftError

    if data_policy not in ("warn", "redact", "reject"):
        raise GraftError(f"--data-policy must be warn, redact or reject, got {data_policy!r}", param="data_policy")
    tokenizer, ctx = load_tokenizer(model) if model else (None, None)
    report = validate_file(file, fmt=format, tokenizer=tokenizer, context_length=context_length or ctx,
                           epochs=epochs)
    if json:
        print_json(report)
    else:
        print_report(file, report)
        if report["finding_count"] and data_policy != "reject":
            console.print("personal data is a warning under data policy warn; upload with --data-policy redact to "
                          "store a copy with placeholders, or reject to refuse such files")
    raise typer.Exit(0 if report["valid"] and not (data_policy == "reject" and report["finding_count"]) else 1)


def print_report(file: str, report: dict) -> None:
    status = "[green]valid[/]" if report["valid"] else "[red]invalid[/]"
    console.print(f"{file}: {status} ({report.get('format') or 'unknown format'})")
    if report["errors"]:
        table = Table("line", "field", "problem")
        for e in report["errors"]:
            table.add_row(str(e["line"]), e.get("field") or "", e["message"])
        console.print(table)
        total = report.get("error_count", len(report["errors"]))
        if total > len(report["errors"]):
            console.print(f"... {total - len(report['errors'])} more errors not listed")
    if report.get("findings"):
        table = Table("line", "field", "personal data (value not shown)")
        for f in report["findings"]:
            table.add_row(str(f["line"] or ""), f.get("field") or "", f["kind"])
        console.print(table)
        total = report["finding_count"]
        by_kind = ", ".join(f"{n} {kind}" for kind, n in report["findings_by_kind"].items())
        console.print(f"{total} personal-data finding{'s' if total != 1 else ''}: {by_kind}"
                      + (f" ({total - len(report['findings'])} not listed)" if total > len(report["findings"]) else ""))
    stats = Table("statistic", "value")
    for key, value in stat_rows(shown_stats(report.get("stats", {}))):
        stats.add_row(key, value)
    console.print(stats)
    if (report.get("stats") or {}).get("tokens") is None:
        console.print("token statistics: pass --model MODEL to tokenize with its chat template")


def shown_stats(stats: dict) -> dict:
    """The statistics a person reads: without a tokenizer no token rows (nor the epochs they are estimated
    for); with one, the training-token estimate once, after the epochs it assumes."""
    shown = {k: v for k, v in stats.items() if k not in ("epochs", "tokens", "estimated_training_tokens")}
    if stats.get("tokens") is not None:
        shown["tokens"] = {k: v for k, v in stats["tokens"].items() if k != "estimated_training_tokens"}
        shown["epochs"] = stats.get("epochs")
        shown["estimated_training_tokens"] = stats.get("estimated_training_tokens")
    return shown


def stat_rows(stats: dict, prefix: str = "") -> list[tuple[str, str]]:
    """Nested statistics as flat (name, value) rows: ``tokens.mean`` → ``tokens mean``, numbers grouped."""
    rows = []
    for key, value in stats.items():
        name = f"{prefix}{key.replace('_', ' ')}"
        if isinstance(value, dict):
            rows.extend(stat_rows(value, prefix=f"{name}: "))
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            rows.append((name, str(value)))
        else:
            rows.append((name, f"{value:,}" if isinstance(value, int) else f"{value:,.2f}"))
    return rows


@app.command("from-logs")
@friendly_errors
def from_logs(endpoint: str = typer.Option(..., "--endpoint", help="endpoint name or id (with log_requests on)"),
              out: str = typer.Option(..., "--out", help="directory for sft.jsonl and preference.jsonl"),
              since: Optional[str] = typer.Option(None, "--since", help="ISO date/time, or an age like 7d"),
              min_rating: float = typer.Option(4.0, "--min-rating", help="good: score >= this (1-5; thumbs up = 5)"),
              max_bad_rating: float = typer.Option(2.0, "--max-bad-rating",
                                                   help="bad: score <= this (thumbs down = 1)"),
              judge: Optional[str] = typer.Option(None, "--judge", help="judge:<model>: keep good answers it grades "
                                                  ">= --judge-min"),
              judge_min: int = typer.Option(4, "--judge-min"),
              variants: int = typer.Option(0, "--variants", help="paraphrases per SFT prompt (synth), with "
                                           "--variants-model"),
              variants_model: Optional[str] = typer.Option(None, "--variants-model"),
              upload: bool = typer.Option(False, "--upload", help="also upload them as fine-tune files"),
              json: bool = typer.Option(False, "--json")):
    """Training data from an endpoint's rated logs: SFT (corrections, good answers) and preference pairs."""
    from graftlm.cli.common import parse_since
    from graftlm.clusters.endpoints import find_endpoint
    from graftlm.errors import NotFound
    from graftlm.observe import from_logs as build_data

    e = find_endpoint(endpoint)
    if e is None:
        raise NotFound(f"no endpoint with id or name {endpoint!r}", param="endpoint")
    result = build_data.build(e["id"], since=parse_since(since), min_rating=min_rating,
                              max_bad_rating=max_bad_rating, judge=judge, judge_min=judge_min)
    written = build_data.write(result, out, variants=variants, variants_model=variants_model)
    if upload:
        from graftlm.files.service import upload_local

        for entry in written.values():
            entry["file_id"] = upload_local(entry["path"])
    if json:
        return print_json({"stats": result["stats"], "files": written})
    s = result["stats"]
    console.print(f"{s['logged']} logged, {s['rated']} rated ({s['skipped_text']} text completions skipped), "
                  f"{s['prompts']} prompts: {s['good']} good and {s['bad']} bad answers")
    for name, entry in written.items():
        console.print(f"{name}: {entry['examples']} examples → {entry['path']} (valid {entry['format']})"
                      + (f", uploaded as {entry['file_id']}" if "file_id" in entry else ""))
    if not written:
        console.print("nothing to write: no rated answer qualifies (rate completions with POST /v1/feedback)")
