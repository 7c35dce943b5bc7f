"""`graft`: the command line. Commands that need no server work directly on GRAFT_HOME."""

from __future__ import annotations

import typer

from graftlm.cli import data, keys, models, serve

app = typer.Typer(help="graftlm: fine-tune open LLMs and serve many adapters from one batch.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
app.add_typer(models.app, name="models", help="Pull, import, list and export models.")
app.add_typer(data.app, name="data", help="Validate datasets.")
app.add_typer(keys.app, name="keys", help="Manage API keys.")
app.command("serve")(serve.serve)
app.command("chat")(models.chat)
