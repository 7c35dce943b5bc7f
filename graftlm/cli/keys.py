"""graft keys create|list|revoke, graft projects create|list|show|update|delete, graft audit.

These work on GRAFT_HOME directly, as the instance's operator (the HTTP API has the same:
/v1/projects, /v1/projects/{p}/keys, /v1/audit_events)."""

from __future__ import annotations

import time

import typer
from rich.table import Table

from graftlm.cli.common import console, friendly_errors, iso_time, parse_since
from graftlm.keys import audit as audit_log
from graftlm.keys import projects as project_store
from graftlm.keys import service as keys

app = typer.Typer(no_args_is_help=True)
projects_app = typer.Typer(no_args_is_help=True)


@app.command("create")
@friendly_errors
def create(name: str = typer.Option("default", "--name"),
           project: str = typer.Option("default", "--project", help="the project the key belongs to"),
           role: str = typer.Option("editor", "--role", help="metrics (GET /metrics only) | viewer (read) | "
                                                            "editor (create, run, change) | admin (+ the "
                                                            "project's keys and audit trail)"),
           expires_in_days: float | None = typer.Option(None, "--expires-in-days", min=0.001,
                                                        help="refuse the key after this many days")):
    expires_at = int(time.time() + expires_in_days * 86400) if expires_in_days else None
    secret, record = keys.create_key(name, role=role, project=project, expires_at=expires_at)
    console.print(f"{record['id']}  {secret}\n[dim]{record['role']} of project {record['project']}"
                  f"{', expires ' + iso_time(expires_at) if expires_at else ''}. "
                  "Store this key now: it is not shown again.[/]")


@app.command("list")
@friendly_errors
def list_(project: str | None = typer.Option(None, "--project", help="only this project's keys")):
    table = Table("id", "name", "prefix", "project", "role", "expires", "revoked")
    for k in keys.list_keys(project):
        table.add_row(k["id"], k["name"], k["prefix"] + "…", "(instance admin)" if k["is_admin"] else k["project"],
                      k["role"], iso_time(k["expires_at"]) if k["expires_at"] else "",
                      "yes" if k["revoked_at"] else "")
    console.print(table)


@app.command("revoke")
@friendly_errors
def revoke(key_id: str):
    keys.revoke_key(key_id)
    console.print(f"revoked {key_id}")


def _quota_opts(max_clusters, max_units, max_file_bytes) -> dict:
    return {k: v for k, v in (("max_clusters", max_clusters), ("max_units", max_units),
                              ("max_file_bytes", max_file_bytes)) if v is not None}


def _show(p: dict) -> None:
    quotas = ", ".join(f"{k} {v}" for k, v in p["quotas"].items() if v is not None) or "no quotas"
    console.print(f"{p['id']}  data_policy {p['data_policy']}  {quotas}"
                  + (f"  [dim]{p['description']}[/]" if p["description"] else ""))


@projects_app.command("create")
@friendly_errors
def project_create(name: str, description: str | None = typer.Option(None, "--description"),
                   data_policy: str = typer.Option("warn", "--data-policy", help="warn | redact | reject"),
                   max_clusters: int | None = typer.Option(None, "--max-clusters", min=0),
                   max_units: int | None = typer.Option(None, "--max-units", min=0),
                   max_file_bytes: int | None = typer.Option(None, "--max-file-bytes", min=0)):
    _show(project_store.create_project(name, description=description, data_policy=data_policy,
                                       **_quota_opts(max_clusters, max_units, max_file_bytes)))


@projects_app.command("list")
@friendly_errors
def project_list():
    table = Table("project", "data policy", "max clusters", "max units", "max file bytes", "created")
    for p in project_store.list_projects()["data"]:
        q = p["quotas"]
        table.add_row(p["id"], p["data_policy"], *(str(q[k]) if q[k] is not None else "-" for k in project_store.QUOTAS),
                      iso_time(p["created_at"]))
    console.print(table)


@projects_app.command("show")
@friendly_errors
def project_show(name: str):
    _show(project_store.get_project(name))


@projects_app.command("update")
@friendly_errors
def project_update(name: str, description: str | None = typer.Option(None, "--description"),
                   data_policy: str | None = typer.Option(None, "--data-policy"),
                   max_clusters: int | None = typer.Option(None, "--max-clusters", min=0),
                   max_units: int | None = typer.Option(None, "--max-units", min=0),
                   max_file_bytes: int | None = typer.Option(None, "--max-file-bytes", min=0)):
    _show(project_store.update_project(name, description=description, data_policy=data_policy,
                                       **_quota_opts(max_clusters, max_units, max_file_bytes)))


@projects_app.command("delete")
@friendly_errors
def project_delete(name: str):
    project_store.delete_project(name)
    console.print(f"deleted project {name} (its keys are revoked)")


@friendly_errors
def audit(project: str | None = typer.Option(None, "--project"), key: str | None = typer.Option(None, "--key"),
          action: str | None = typer.Option(None, "--action", help='e.g. "DELETE /v1/files/{file_id}"'),
          outcome: str | None = typer.Option(None, "--outcome", help="allowed | denied | failed"),
          since: str | None = typer.Option(None, "--since", help="an ISO date/time or an age: 2h, 7d"),
          limit: int = typer.Option(50, "--limit", min=1, max=audit_log.MAX_PAGE)):
    """The audit trail: mutating and denied requests, newest first."""
    page = audit_log.list_events(project=project, key_id=key, action=action, outcome=outcome,
                                 since=parse_since(since), limit=limit)
    table = Table("time", "project", "key", "role", "action", "resource", "status", "outcome", "client")
    for e in page["data"]:
        table.add_row(iso_time(e["created_at"]), e["project"] or "-", e["key_id"] or "-", e["role"] or "-",
                      e["action"], e["resource_id"] or "-", str(e["status"]), e["outcome"], e["client"] or "-")
    console.print(table)
