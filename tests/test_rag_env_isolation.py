"""tests/conftest.py keeps a GRAFT_RAG_DATABASE_URL from the shell away from tests: knowledge bases go to the
test's own GRAFT_HOME/rag.db unless a test sets the URL itself."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_default_rag_store_is_this_tests_sqlite_file(graft_home):
    from graftlm.config import get_settings

    assert "GRAFT_RAG_DATABASE_URL" not in os.environ
    assert Path(get_settings().rag_db) == graft_home / "rag.db"


def test_a_shell_rag_database_url_does_not_reach_tests():
    """Run the test above in a fresh pytest whose environment names a PostgreSQL server."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "GRAFT_RAG_DATABASE_URL": "postgresql://nobody@db.invalid:5432/should_not_be_used"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           f"tests/{Path(__file__).name}::test_default_rag_store_is_this_tests_sqlite_file"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_test_may_still_set_it(monkeypatch):
    from graftlm.config import get_settings, reset_settings

    url = "postgresql://user@localhost/kbs"
    monkeypatch.setenv("GRAFT_RAG_DATABASE_URL", url)
    reset_settings()
    assert get_settings().rag_db == url
