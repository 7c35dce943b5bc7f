"""Shared CLI helpers: JSON output, clear errors, progress bars."""

from __future__ import annotations

import functools
from datetime import datetime
import sys

import orjson
import typer
from rich.console import Console

from graftlm.errors import GraftError

console = Console()
err_console = Console(stderr=True)


def iso_time(ts: float | int | None) -> str:
    """A Unix timestamp as local ISO 8601 with its offset, to the second ('-' for none)."""
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds")


def parse_since(text: str | None) -> int | None:
    """``--since``: an ISO date or date-time (local time unless it has an offset), or an age like 30m, 2h, 7d."""
    if text is None:
        return None
    import re
    import time

    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if m:
        return int(time.time() - float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)])
    try:
        return int(datetime.fromisoformat(text.strip()).timestamp())
    except ValueError:
        raise GraftError(f"--since takes an ISO date/time or an age like 2h or 7d, not {text!r}",
                         param="since") from None


def print_json(obj) -> None:
    sys.stdout.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2, default=str).decode() + "\n")


def friendly_errors(fn):
    """Turn a GraftError into a one-line message and exit code 2 instead of a traceback."""
    if getattr(fn, "friendly_errors", False):
        return fn

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except GraftError as e:
            hint = f" (param: {e.param})" if e.param else ""
            err_console.print(f"[bold red]error:[/] {e.message}{hint}")
            raise typer.Exit(2)
    wrapper.friendly_errors = True
    return wrapper


def wrap_commands(app: typer.Typer) -> typer.Typer:
    """Every command of ``app`` and of its sub-apps behind friendly_errors (graftlm.cli.main calls it once)."""
    for command in app.registered_commands:
        command.callback = friendly_errors(command.callback)
    for group in app.registered_groups:
        wrap_commands(group.typer_instance)
    return app
