"""The README's examples run as written (issue 16): its bash, YAML and Python blocks are read from README.md and
run here on the tiny random Llama, registered under the README's model name (smollm2-135m-instruct), in a
folder holding the files the examples name (train.jsonl, test.jsonl, ./manual/*.md, ...).

Every bash command of the README must be in RULES: run, or skipped with its reason; a command added to the
README that the table does not know fails the test, so the README cannot grow examples nobody ran.
Placeholders the README writes for values only a run knows (`ID`, `ft:…`, `ftjob-…`) are filled with the ids
the commands before them created. Cost: the CLI block trains one tiny job (~20 s), the SDK block one, the
Python/openai block one through a live server; the RAG block loads MiniLM (~10 s). Those four are `slow` (about
3 minutes together on 2 shared cores: `make test-slow`); the check that every README command is in RULES is not.
"""

from __future__ import annotations

import glob
import json
import re
import shlex
import shutil
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

README = Path(__file__).resolve().parent.parent / "README.md"
MODEL = "smollm2-135m-instruct"

# (pattern on the command, None to run it, or the reason it is not run here)
RULES = [
    (r"^make demo\b", "pulls the real SmolLM2-135M wheel and trains for minutes; `make demo` is its own check and "
                      "its steps are the CLI commands run below"),
    (r"^make test\b", "runs this test suite"),
    (r"^graft serve\b", "runs until stopped; the tests' live server is the same app (create_app), and "
                        "tests/test_cli_server.py checks what `graft serve` writes"),
    (r"^graft worker\b", "runs until stopped; `graft finetune create --watch` below schedules its job the same way"),
    (r"^graft ", None),
]


def blocks(lang: str) -> list[str]:
    return [m.group(1) for m in re.finditer(rf"```{lang}\n(.*?)```", README.read_text(), re.S)]


def commands(block: str) -> list[list[str]]:
    """Each command of a bash block as argv: comments dropped, `;` and `&&` split, and the README's
    `graft jobs list | show ID | ...` shorthand expanded to one command per verb."""
    out = []
    for line in block.splitlines():
        lex = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lex.whitespace_split, lex.commenters = True, "#"
        tokens, current = list(lex), []
        groups = []
        for t in tokens + [";"]:
            if t in (";", "&&", "|"):
                if current:
                    groups.append((current, t))
                current = []
            else:
                current.append(t)
        prefix = None
        for argv, sep in groups:
            if argv[0] != "graft" and argv[0] != "make" and prefix:
                argv = prefix + argv  # `| show ID` after `graft jobs list`
            elif sep == "|":
                prefix = argv[:2]
            out.append(argv)
    return out


def rule(argv: list[str]) -> str | None:
    line = " ".join(argv)
    for pattern, reason in RULES:
        if re.match(pattern, line):
            return reason
    raise AssertionError(f"README command not covered by tests/test_readme_examples.py RULES: {line}")


def invoke(argv: list[str]):
    from graftlm.cli.main import app

    expanded = []
    for a in argv[1:]:
        expanded.extend(sorted(glob.glob(a)) if "*" in a else [a])
    return CliRunner().invoke(app, expanded, terminal_width=200)


def chat_rows(pairs) -> str:
    return "".join(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
                   + "\n" for q, a in pairs)


PAIRS = [(f"{w} please {i}", w) for i in range(3) for w in ("balance", "transfer", "freeze", "hello", "card")]


@pytest.fixture
def workdir(tmp_path, monkeypatch, tiny_model_dir):
    """The README's model name on the tiny model, and the files its examples read, in the current folder."""
    from graftlm.models.catalog import import_model

    import_model(tiny_model_dir, MODEL)
    monkeypatch.chdir(tmp_path)
    Path("train.jsonl").write_text(chat_rows(PAIRS))
    Path("test.jsonl").write_text(chat_rows(PAIRS[:4]))
    shutil.copytree(tiny_model_dir, "my-llama")
    Path("manual").mkdir()
    Path("manual/pin.md").write_text("# PIN\n\nTo reset your PIN, open the app, choose Security and Reset PIN.\n")
    Path("manual/limits.md").write_text("# Limits\n\nThe daily transfer limit is 5,000 dollars.\n")
    Path("cards").mkdir()
    Path("cards/lost.md").write_text("# Lost card\n\nA lost card is frozen from the Cards page; reset pin there.\n")
    Path("q.jsonl").write_text(json.dumps({"id": "q1", "question": "how do I reset my pin"}) + "\n")
    Path("qrels.trec").write_text("q1 0 pin.md 1\n")
    return tmp_path


def _jobs():
    from graftlm.jobs.service import list_jobs

    return list_jobs(limit=100)["data"]


def test_the_readme_names_only_commands_the_table_knows():
    every = [argv for lang in ("bash",) for b in blocks(lang) for argv in commands(b)]
    assert len(every) > 20
    skipped = {" ".join(a): rule(a) for a in every if rule(a)}
    assert set(skipped) == {"make demo", "make test", "graft serve --port 8000", "graft worker"}, skipped


@pytest.mark.slow
def test_the_cli_block_and_the_yaml_job_run_as_written(workdir):
    """`## Using it`: every graft command, in order, with the README's job.yaml."""
    Path("job.yaml").write_text(blocks("yaml")[0])
    block = next(b for b in blocks("bash") if "graft models pull" in b)
    ran, queued = [], None
    for argv in commands(block):
        if rule(argv):
            continue
        line = " ".join(argv)
        if "ID" in argv:  # show / events the watched (finished) job; pause, resume, cancel the queued YAML one
            watched = next(j for j in _jobs() if j["status"] == "succeeded")
            if argv[2] in ("cancel", "pause", "resume"):
                continue  # run below in an order that is valid for one queued job
            argv = [a.replace("ID", watched["id"]) for a in argv]
        if any(a.startswith("ft:") for a in argv):
            custom = next(j for j in _jobs() if j["status"] == "succeeded")["fine_tuned_model"]
            argv = [custom if a.startswith("ft:") else a for a in argv]
        r = invoke(argv)
        assert r.exit_code == 0, f"{line}\n{r.output}"
        ran.append(line)
        if "--config" in argv:
            queued = re.search(r"created (ftjob-\w+)", r.output).group(1)
    for verb, state in (("pause", "paused"), ("resume", "queued"), ("cancel", "cancelled")):
        r = invoke(["graft", "jobs", verb, queued])
        assert r.exit_code == 0, f"jobs {verb}\n{r.output}"
        assert next(j for j in _jobs() if j["id"] == queued)["status"] == state
    assert len(ran) >= 15
    yaml_job = next(j for j in _jobs() if j["id"] == queued)
    assert yaml_job["suffix"] == "bot" and yaml_job["hyperparameters"]["training_method"] == "lora"
    assert yaml_job["metadata"] == {"team": "support"}
    assert Path("bot/config.json").exists() and Path("bot-adapter/README.md").exists()


@pytest.mark.slow
def test_the_openai_block_runs_against_a_live_server(workdir, live_server, graft_home):
    """The `openai` example, its base_url pointed at the test's server; support-bot is an endpoint, as the CLI
    block creates it."""
    from graftlm.clusters import clusters, endpoints
    from graftlm.store.db import session
    from graftlm.store.models import Model
    from graftlm.testing.adapters import make_peft_adapter

    from tests.conftest import ADMIN_KEY

    (graft_home / "admin.key").write_text(ADMIN_KEY + "\n")  # what `graft serve` writes
    adapter = make_peft_adapter(str(workdir / "my-llama"), workdir / "bot-lora", kind="lora", r=4)
    with session() as s:
        s.add(Model(id=f"ft:{MODEL}:bot:ftjob-x", kind="custom", parent=MODEL, path=str(adapter), adapter_type="lora"))
    cluster = clusters.create_cluster("HOSTING", base_model=MODEL, name="prod")
    endpoints.create_endpoint(f"ft:{MODEL}:bot:ftjob-x", cluster["id"], "support-bot")
    code = next(b for b in blocks("python") if "from openai import OpenAI" in b)
    assert "http://127.0.0.1:8000/v1" in code
    ns: dict = {}
    exec(compile(code.replace("http://127.0.0.1:8000/v1", live_server), "README.md", "exec"), ns)
    deadline = time.time() + 240
    while ns["client"].fine_tuning.jobs.retrieve(ns["job"].id).status not in ("succeeded", "failed", "cancelled"):
        assert time.time() < deadline, "the README's job did not finish"
        time.sleep(0.5)
    assert ns["client"].fine_tuning.jobs.retrieve(ns["job"].id).status == "succeeded"


@pytest.mark.slow
def test_the_sdk_block_runs_embedded(workdir):
    code = next(b for b in blocks("python") if "from graftlm import fm" in b)
    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)
    assert ns["custom"].startswith(f"ft:{MODEL}:support-bot:ftjob-")
    from graftlm import fm

    runs = fm.evals.list_runs(ns["ev"]["id"])
    assert runs and runs[0]["model"] == ns["custom"]


@pytest.mark.slow
def test_the_rag_block_runs_as_written(workdir):
    block = next(b for b in blocks("bash") if "graft kb create" in b)
    for argv in commands(block):
        assert rule(argv) is None
        r = invoke(argv)
        assert r.exit_code == 0, f"{' '.join(argv)}\n{r.output}"
    from graftlm import rag

    docs = {d["id"]: d for d in rag.list_documents("docs")}
    assert docs["lost.md"]["metadata"]["year"] == 2024 and docs["lost.md"]["metadata"]["product"] == "card"
    rag.close_stores()
