"""graft clusters create|list|show|delete, graft endpoints ..., graft usage."""

from __future__ import annotations

import sys
from typing import Optional

import typer
from rich.table import Table

from graftlm.cli.common import console, friendly_errors, iso_time, print_json
from graftlm.clusters import clusters, endpoints, metering

clusters_app = typer.Typer(no_args_is_help=True)
endpoints_app = typer.Typer(no_args_is_help=True)


@clusters_app.command("create")
@friendly_errors
def create_cluster(type: str = typer.Option("HOSTING", "--type", help="HOSTING | FINE_TUNING"),
                   base_model: Optional[str] = typer.Option(None, "--base-model"),
                   units: Optional[int] = typer.Option(None, "--units"),
                   name: Optional[str] = typer.Option(None, "--name"),
                   deterministic: bool = typer.Option(False, "--deterministic",
                                                      help="HOSTING: serve in fp32, batch-invariant (see README)"),
                   yes: bool = typer.Option(False, "--yes", "-y", help="do not ask before committing")):
    """Create a cluster; says first what it commits to (and asks, on a terminal, unless --yes)."""
    kind = type.upper()
    units_shown = units if units is not None else clusters.TYPES.get(kind, 1)
    if kind in clusters.TYPES:
        console.print(f"commitment: {metering.commitment(kind, units_shown)['text']}")
        if not yes and sys.stdin.isatty() and not typer.confirm("create it?", default=True):
            raise typer.Exit(1)
    c = clusters.create_cluster(kind, unit_count=units, base_model=base_model, name=name,
                                deterministic=deterministic)
    console.print(f"created [bold]{c['id']}[/] ({c['type']}, {c['unit_count']} units"
                  + (", deterministic fp32 serving" if c.get("deterministic") else "") + ")")


@clusters_app.command("list")
@friendly_errors
def list_clusters():
    table = Table("id", "name", "type", "units", "base model", "endpoints", "state")
    for c in clusters.list_clusters():
        used = f"{c['used_endpoint_capacity']}/{c['total_endpoint_capacity']}" if c["type"] == "HOSTING" else ""
        table.add_row(c["id"], c["name"], c["type"], str(c["unit_count"]), c.get("base_model") or "", used,
                      c["lifecycle_state"])
    console.print(table)


@clusters_app.command("show")
@friendly_errors
def show_cluster(cluster_id: str):
    """Show a cluster (by id, a unique id prefix, or name)."""
    print_json(clusters.get_cluster(clusters.resolve_cluster_id(cluster_id)))


@clusters_app.command("delete")
@friendly_errors
def delete_cluster(cluster_id: str):
    """Delete a cluster (by id, a unique id prefix, or name)."""
    clusters.delete_cluster(clusters.resolve_cluster_id(cluster_id))
    console.print(f"deleted {cluster_id}")


@endpoints_app.command("create")
@friendly_errors
def create_endpoint(model: str = typer.Option(..., "--model"), cluster: str = typer.Option(..., "--cluster"),
                    name: Optional[str] = typer.Option(None, "--name"),
                    log_requests: bool = typer.Option(False, "--log-requests",
                                                      help="store each completion (see graft endpoints logs)"),
                    log_retention_days: Optional[int] = typer.Option(None, "--log-retention-days",
                                                                     help="keep logs this many days (30)")):
    e = endpoints.create_endpoint(model, clusters.resolve_cluster_id(cluster), name, log_requests=log_requests,
                                  log_retention_days=log_retention_days)
    console.print(f"created endpoint [bold]{e['name']}[/] ({e['id']}) → {e['model']}"
                  + (f", logging requests for {e['log_retention_days']} days" if e["log_requests"] else ""))


def _endpoint_id(name_or_id: str) -> str:
    e = endpoints.find_endpoint(name_or_id)
    return e["id"] if e else name_or_id


@endpoints_app.command("update")
@friendly_errors
def update_endpoint(endpoint: str, model: Optional[str] = typer.Option(None, "--model"),
                    name: Optional[str] = typer.Option(None, "--name"),
                    log_requests: Optional[bool] = typer.Option(None, "--log-requests/--no-log-requests"),
                    log_retention_days: Optional[int] = typer.Option(None, "--log-retention-days")):
    """Change an endpoint (by id or name): its model, name, request logging."""
    e = endpoints.update_endpoint(_endpoint_id(endpoint), name=name, model=model, log_requests=log_requests,
                                  log_retention_days=log_retention_days)
    print_json(e)


@endpoints_app.command("logs")
@friendly_errors
def endpoint_logs(endpoint: str, limit: int = typer.Option(20, "--limit"),
                  after: Optional[str] = typer.Option(None, "--after", help="the last id of the previous page"),
                  since: Optional[str] = typer.Option(None, "--since", help="ISO date/time, or e.g. 2h, 7d"),
                  min_rating: Optional[float] = typer.Option(None, "--min-rating", help="1-5 (thumbs up = 5)"),
                  max_rating: Optional[float] = typer.Option(None, "--max-rating", help="1-5 (thumbs down = 1)"),
                  feedback: Optional[bool] = typer.Option(None, "--feedback/--no-feedback",
                                                          help="only rows with (without) feedback"),
                  json: bool = typer.Option(False, "--json")):
    """An endpoint's logged completions (by id or name), newest first."""
    from graftlm.cli.common import parse_since
    from graftlm.observe import logs

    page = logs.list_logs(_endpoint_id(endpoint), after=after, limit=limit, since=parse_since(since),
                          min_rating=min_rating, max_rating=max_rating, has_feedback=feedback)
    if json:
        return print_json(page)
    for r in page["data"]:  # one block per completion: ids and texts stay whole at any width
        ask = r["request"] or {}
        prompt = ask["messages"][-1]["content"] if ask.get("messages") else ask.get("prompt", "")
        answer = ((r["response"] or {}).get("choices") or [{}])[0].get("text", "")
        fb = r["feedback"]
        rating = "" if fb is None else f"  rating {fb['rating']}" + ("  (corrected)" if fb["correction"] else "")
        console.print(f"[bold]{r['id']}[/]  {iso_time(r['created_at'])}  {r['model']}  "
                      f"{r['usage']['prompt_tokens']}+{r['usage']['completion_tokens']} tokens  "
                      f"{r['latency_ms']:.0f} ms{rating}", soft_wrap=True)
        console.print(f"  prompt: {prompt[:200]!r}", soft_wrap=True, markup=False)
        console.print(f"  answer: {answer[:200]!r}", soft_wrap=True, markup=False)
        if fb and fb["correction"]:
            console.print(f"  correction: {fb['correction'][:200]!r}", soft_wrap=True, markup=False)
    if page["has_more"]:
        console.print(f"more: --after {page['data'][-1]['id']}")


@endpoints_app.command("list")
@friendly_errors
def list_endpoints(cluster: Optional[str] = typer.Option(None, "--cluster")):
    table = Table("id", "name", "model", "cluster", "state")
    for e in endpoints.list_endpoints(clusters.resolve_cluster_id(cluster) if cluster else None):
        table.add_row(e["id"], e["name"], e["model"], e["dedicated_ai_cluster_id"], e["lifecycle_state"])
    console.print(table)


def _endpoint_action(fn, verb: str):
    @friendly_errors
    def command(endpoint_id: str):
        e = fn(endpoints.find_endpoint(endpoint_id)["id"] if endpoints.find_endpoint(endpoint_id) else endpoint_id)
        console.print(f"{verb} {endpoint_id}" + (f": {e['lifecycle_state']}" if "lifecycle_state" in e else ""))
    command.__doc__ = f"{verb.capitalize()} an endpoint (by id or name)."
    return command


endpoints_app.command("activate")(_endpoint_action(endpoints.activate_endpoint, "activated"))
endpoints_app.command("deactivate")(_endpoint_action(endpoints.deactivate_endpoint, "deactivated"))
endpoints_app.command("delete")(_endpoint_action(endpoints.delete_endpoint, "deleted"))


@friendly_errors
def usage(price_per_unit_hour: Optional[float] = typer.Option(None, "--price-per-unit-hour"),
          json: bool = typer.Option(False, "--json")):
    """Unit-hours per dedicated AI cluster, and the cost at a price per unit-hour."""
    report = metering.usage_report(price_per_unit_hour)
    if json:
        return print_json(report)
    table = Table("cluster", "name", "type", "units", "jobs", "committed", "used", "billed unit-hours")
    for r in report["data"]:
        table.add_row(r["dedicated_ai_cluster_id"], r["name"] or "", r["type"], str(r["unit_count"]),
                      str(r["jobs"]), f"{r['committed_unit_hours']:.2f}", f"{r['used_unit_hours']:.2f}",
                      f"{r['unit_hours']:.2f}")
    console.print(table)
    console.print("billed = the larger of committed (OCI's minimums: 744 per hosting cluster, 1 per job) and used "
                  "(units × hours)")
    console.print(f"total: {report['total_unit_hours']:.2f} unit-hours"
                  + (f" × {price_per_unit_hour} = {report['cost']:.2f}" if price_per_unit_hour is not None else ""))
