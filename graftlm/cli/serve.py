"""graft serve: the HTTP API (and, once jobs exist, the job scheduler)."""

from __future__ import annotations

import logging

import typer

from graftlm.cli.common import console


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
    uvicorn.run(create_app(), host=host, port=port, log_level=log_level)
