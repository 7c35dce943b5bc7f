"""Issue 16 item 12: `graft data validate` without --model shows no token rows (no `epochs 3`, no
`tokens None`); with --model the training-token estimate appears once."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from graftlm.cli.main import app

runner = CliRunner()


def _file(tmp_path):
    f = tmp_path / "chat.jsonl"
    f.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                          {"role": "assistant", "content": "hello"}]}) + "\n")
    return f


def test_without_model_no_token_rows(tmp_path):
    r = runner.invoke(app, ["data", "validate", str(_file(tmp_path))], terminal_width=200)
    assert r.exit_code == 0, r.output
    assert "None" not in r.stdout and "epochs" not in r.stdout and "estimated" not in r.stdout
    assert "pass --model" in r.stdout


def test_with_model_the_estimate_appears_once(tiny_model, tmp_path):
    r = runner.invoke(app, ["data", "validate", str(_file(tmp_path)), "--model", "tiny"], terminal_width=200)
    assert r.exit_code == 0, r.output
    assert r.stdout.count("estimated training tokens") == 1 and "epochs" in r.stdout
