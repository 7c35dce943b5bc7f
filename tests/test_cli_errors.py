"""Every `graft` command turns a GraftError into one line and exit code 2, never a traceback."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner


def all_commands(app: typer.Typer, path: str = "graft"):
    for command in app.registered_commands:
        yield f"{path} {command.name or command.callback.__name__}", command.callback
    for group in app.registered_groups:
        yield from all_commands(group.typer_instance, f"{path} {group.name}")


def test_every_registered_command_is_wrapped():
    from graftlm.cli import app

    commands = dict(all_commands(app))
    assert len(commands) > 40 and "graft ladder" in commands and "graft data synth" in commands
    assert [name for name, fn in commands.items() if not getattr(fn, "friendly_errors", False)] == []


def write_eval(tmp_path):
    path = tmp_path / "eval.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": "hello"}]}) + "\n")
    return str(path)


@pytest.mark.parametrize("argv, message", [
    (["eval", "run", "-m", "no-such-model", "-d", "{eval}"], "no-such-model"),
    (["eval", "compare", "evalrun-a", "evalrun-b"], "evalrun-a"),
    (["eval", "forgetting", "no-such-model"], "no-such-model"),
    (["ladder", "--data", "{eval}", "--eval", "{eval}", "-m", "no-such-model", "--methods", ""], "no-such-model"),
    (["data", "synth", "{tmp}/missing-dir", "-m", "no-such-model"], "missing-dir"),
    (["chat", "no-such-model", "hello"], "no-such-model"),
])
def test_user_errors_are_one_line(tmp_path, argv, message):
    from graftlm.cli import app

    argv = [a.format(eval=write_eval(tmp_path), tmp=tmp_path) for a in argv]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2, (result.output, result.exception)
    assert "error:" in result.output and message in result.output
    assert "Traceback" not in result.output


def test_chat_answers_through_the_serving_engine(varied_model_dir):
    from graftlm.cli import app
    from graftlm.clusters.hosting import get_runtime
    from graftlm.inference.service import chat_batch
    from graftlm.models.catalog import import_model

    import_model(varied_model_dir, "tiny")
    result = CliRunner().invoke(app, ["chat", "tiny", "hello there", "--max-tokens", "8"])
    assert result.exit_code == 0, result.output
    assert get_runtime().resolve("tiny").engine is not None  # the command started the shared engine
    expected = chat_batch([("tiny", [{"role": "user", "content": "hello there"}])], max_tokens=8)[0]["text"]
    assert result.output.strip() == expected.strip() != ""
