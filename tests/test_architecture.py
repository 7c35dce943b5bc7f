"""The layering of pyproject.toml's [tool.importlinter] contracts: interfaces → services → engines → store/data →
config, and no import cycles. Checked with import-linter on the source tree, and shown to fail on a copy of the
tree in which a service imports a route."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def lint_imports(tree: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command as c; c()",
                           "--no-cache", "--config", str(tree / "pyproject.toml")], cwd=tree, env=env, capture_output=True, text=True)


def copy_tree(dst: Path) -> Path:
    shutil.copytree(ROOT / "graftlm", dst / "graftlm", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", dst / "pyproject.toml")
    return dst


def test_contracts_hold():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 2 kept, 0 broken" in result.stdout


def test_route_imported_from_service_breaks_the_layers(tmp_path):
    tree = copy_tree(tmp_path)
    service = tree / "graftlm" / "jobs" / "service.py"
    service.write_text(service.read_text() + "\nfrom graftlm.api.routes import files as _routes  # noqa\n")
    result = lint_imports(tree)
    assert result.returncode != 0
    assert "graftlm.jobs is not allowed to import graftlm.api" in result.stdout
    assert "graftlm.jobs.service -> graftlm.api.routes.files" in result.stdout


def test_cycle_inside_a_package_is_refused(tmp_path):
    tree = copy_tree(tmp_path)
    for importer, imported in (("blobs", "models"), ("models", "blobs")):  # blobs ↔ models: a cycle in one layer
        path = tree / "graftlm" / "store" / f"{importer}.py"
        path.write_text(path.read_text() + f"\nfrom graftlm.store import {imported} as _m  # noqa\n")
    result = lint_imports(tree)
    assert result.returncode != 0
    assert "No cycles are allowed in graftlm.store" in result.stdout


def test_no_import_is_exempted():
    import tomllib

    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    assert {c["name"] for c in contracts} == {"layers point down", "no import cycles"}
    assert not [c["name"] for c in contracts if c.get("ignore_imports")]
