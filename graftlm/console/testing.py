"""Playwright + Debian chromium for the console's browser tests and its screenshot script.

The browser is Debian's `chromium` (GRAFT_TEST_CHROMIUM names another binary); Playwright's own browser
downloads are never used. Tests skip with the reason when either is missing; `.ci/run` installs both."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path() -> str | None:
    wanted = os.environ.get("GRAFT_TEST_CHROMIUM")
    if wanted:
        return wanted if Path(wanted).exists() else None
    for name in ("/usr/bin/chromium", "chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


def missing_reason() -> str | None:
    """Why the browser tests cannot run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright; it is in the [dev] extra)"
    if chromium_path() is None:
        return ("no chromium browser (apt-get install chromium, or set GRAFT_TEST_CHROMIUM); "
                ".ci/run installs it")
    return None


def launch(playwright):
    return playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS, headless=True)


def artifacts_dir() -> Path:
    path = Path(os.environ.get("GRAFT_TEST_ARTIFACTS", "test-artifacts"))
    path = path / "console"
    path.mkdir(parents=True, exist_ok=True)
    return path
