"""graft serve: the HTTP API (and, once jobs exist, the job scheduler)."""

from __future__ import annotations

import logging

import typer

from graftlm.cli.common import console
from graftlm.cli.remote import remove_server_file, write_server_file


def serve(host: str = typer.Option("127.0.0.1"), port: int = typer.Option(8000),
          log_level: str = typer.Option("info")):
    """Start the OpenAI-compatible server."""
    import uvicorn

    from graftlm.api.app import create_app
    from graftlm.keys.service import ensure_admin_key
    from graftlm.store.db import upgrade

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    upgrade()
    secret = ensure_admin_key()
    if secret:
        console.print(f"[bold]admin API key[/] (shown once, also saved to GRAFT_HOME/admin.key): {secret}")
    console.print(f"console: http://{host}:{port}/console/ (sign in with an API key)")
    local_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    write_server_file(f"http://{local_host}:{port}/v1")  # graft chat / kb search find this server through it
    try:
        uvicorn.run(create_app(), host=host, port=port, log_level=log_level)
    finally:
        remove_server_file()
