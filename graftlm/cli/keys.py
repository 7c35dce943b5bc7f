"""graft keys create|list|revoke."""

from __future__ import annotations

import typer
from rich.table import Table

from graftlm.keys import service as keys
from graftlm.cli.common import console, friendly_errors

app = typer.Typer(no_args_is_help=True)


@app.command("create")
@friendly_errors
def create(name: str = typer.Option("default", "--name"),
           role: str = typer.Option("editor", "--role", help="metrics (GET /metrics only) | viewer (read) | "
                                                            "editor (create, run, change) | admin")):
    secret, record = keys.create_key(name, role=role)
    console.print(f"{record['id']}  {secret}\n[dim]Store this key now: it is not shown again.[/]")


@app.command("list")
@friendly_errors
def list_():
    table = Table("id", "name", "prefix", "role", "revoked")
    for k in keys.list_keys():
        table.add_row(k["id"], k["name"], k["prefix"] + "…", k["role"],
                      "yes" if k["revoked_at"] else "")
    console.print(table)


@app.command("revoke")
@friendly_errors
def revoke(key_id: str):
    keys.revoke_key(key_id)
    console.print(f"revoked {key_id}")
