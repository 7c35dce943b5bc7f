"""The running server, when there is one: CLI commands that would load a model in this process (`graft chat`,
`graft kb search`) ask it instead, so they answer at the server's warm speed rather than loading the model on
every call.

Found from ``GRAFT_BASE_URL`` (…/v1, with ``GRAFT_API_KEY``) or from ``GRAFT_HOME/server.json``, which
`graft serve` writes while it runs (its URL and pid). A server that does not answer ``/healthz`` within a
second, or ``GRAFT_LOCAL=1`` / ``--local``, means: do it locally, as before. The key is ``GRAFT_API_KEY``,
else the admin key (``GRAFT_ADMIN_KEY`` or ``GRAFT_HOME/admin.key``); ``GRAFT_PROJECT`` names the project an
instance admin key acts in (a project key acts in its own).
"""

from __future__ import annotations

import json
import os
from contextlib import suppress
from pathlib import Path

from graftlm.config import get_settings
from graftlm.errors import GraftError

HEALTH_TIMEOUT_S = 1.0


def server_file() -> Path:
    return get_settings().home / "server.json"


def write_server_file(url: str) -> Path:
    """`graft serve`: say where this server listens (removed again by remove_server_file)."""
    path = server_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".server.json.{os.getpid()}")
    tmp.write_text(json.dumps({"url": url, "pid": os.getpid()}))
    tmp.chmod(0o600)
    os.replace(tmp, path)
    return path


def remove_server_file() -> None:
    """Remove server.json if it is this process's."""
    path = server_file()
    with suppress(OSError, ValueError):
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError, TypeError):
        return False
    return True


def _api_key() -> str | None:
    key = os.environ.get("GRAFT_API_KEY") or get_settings().admin_key
    if key:
        return key
    with suppress(OSError):
        return (get_settings().home / "admin.key").read_text().strip() or None
    return None


def server_url() -> str | None:
    """The running server's base URL (…/v1), or None."""
    if os.environ.get("GRAFT_LOCAL", "").lower() in ("1", "true", "yes"):
        return None
    url = os.environ.get("GRAFT_BASE_URL")
    if not url:
        with suppress(OSError, ValueError, AttributeError):
            info = json.loads(server_file().read_text())
            if _pid_alive(info.get("pid")):
                url = info.get("url")
    if not url:
        return None
    import httpx

    url = url.rstrip("/")
    try:
        ok = httpx.get(url.removesuffix("/v1") + "/healthz", timeout=HEALTH_TIMEOUT_S).status_code == 200
    except httpx.HTTPError:
        ok = False
    return url if ok else None


class Server:
    """A small client of the running server's API that raises GraftError as the local calls do."""

    def __init__(self, url: str):
        import httpx

        self.url = url
        headers = {"Authorization": f"Bearer {_api_key() or ''}"}
        if os.environ.get("GRAFT_PROJECT"):  # the project the instance admin key acts in
            headers["OpenAI-Project"] = os.environ["GRAFT_PROJECT"]
        self.http = httpx.Client(base_url=url, timeout=600, headers=headers)

    def post(self, path: str, body: dict) -> dict:
        r = self.http.post(path, json=body)
        if r.status_code >= 400:
            try:
                err = r.json().get("error", {})
            except ValueError:
                err = {"message": r.text}
            raise GraftError(err.get("message") or r.text, param=err.get("param"), code=err.get("code"),
                             status_code=r.status_code)
        return r.json()


def connect(local: bool = False) -> Server | None:
    """The running server to use, or None to work locally."""
    if local:
        return None
    url = server_url()
    return Server(url) if url else None
