"""The CLI takes what a user copies from its tables: unique id prefixes, cluster names; times are ISO."""

from __future__ import annotations

import json
from datetime import datetime

from typer.testing import CliRunner

from graftlm.cli.main import app
from graftlm.clusters import clusters, endpoints
from graftlm.jobs.service import add_event
from graftlm.store.db import session
from graftlm.store.models import FineTuningJob

runner = CliRunner()


def add_job(job_id: str, **kw) -> None:
    with session() as s:
        s.add(FineTuningJob(id=job_id, model="tiny", training_file="file-t",
                            config={"training_method": "lora"}, **{"status": "queued"} | kw))


def test_jobs_show_takes_a_unique_prefix_and_names_the_matches_of_an_ambiguous_one(tiny_model):
    add_job("ftjob-aaaa1111")
    add_job("ftjob-aaaa2222")
    r = runner.invoke(app, ["jobs", "show", "ftjob-aaaa1"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["id"] == "ftjob-aaaa1111"
    r = runner.invoke(app, ["jobs", "show", "ftjob-aaaa"])
    assert r.exit_code == 2
    assert "several" in r.output and "ftjob-aaaa1111" in r.output and "ftjob-aaaa2222" in r.output
    r = runner.invoke(app, ["jobs", "show", "ftjob-zz"])
    assert r.exit_code == 2 and "no fine-tuning job" in r.output
    r = runner.invoke(app, ["jobs", "cancel", "ftjob-aaaa2"])
    assert r.exit_code == 0 and "ftjob-aaaa2222" in r.output, r.output


def test_like_wildcards_in_a_prefix_match_literally(tiny_model):
    add_job("ftjob-ab_x")
    r = runner.invoke(app, ["jobs", "show", "ftjob-a_"])  # '_' is not "any character"
    assert r.exit_code == 2 and "no fine-tuning job" in r.output


def test_jobs_events_prints_iso_times(tiny_model):
    add_job("ftjob-events1")
    with session() as s:
        add_event(s, "ftjob-events1", "hello event")
    r = runner.invoke(app, ["jobs", "events", "ftjob-ev"])
    assert r.exit_code == 0, r.output
    line = next(x for x in r.output.splitlines() if "hello event" in x)
    stamp = line.split()[0]
    assert datetime.fromisoformat(stamp).tzinfo is not None  # an ISO time, not a Unix timestamp
    assert abs(datetime.fromisoformat(stamp).timestamp() - datetime.now().timestamp()) < 3600


def test_jobs_list_shows_whole_ids_in_80_columns(tiny_model):
    add_job("ftjob-0123456789abcdef01234567", status="succeeded",
            fine_tuned_model="ft:smollm2-135m-instruct:cs-lora:ftjob-0123456789abcdef01234567")
    r = CliRunner().invoke(app, ["jobs", "list"], env={"COLUMNS": "80"}, terminal_width=80)
    assert r.exit_code == 0, r.output
    cells = [line.split("│") for line in r.output.splitlines() if line.startswith("│")]
    assert "".join(c[1].strip() for c in cells) == "ftjob-0123456789abcdef01234567"
    assert "".join(c[5].strip() for c in cells) == "ft:smollm2-135m-instruct:cs-lora:ftjob-0123456789abcdef01234567"


def test_endpoints_create_takes_a_cluster_name_or_id_prefix(tiny_model):
    c = clusters.create_cluster("HOSTING", base_model="tiny", name="cs-prod")
    r = runner.invoke(app, ["endpoints", "create", "--model", "tiny", "--cluster", "cs-prod", "--name", "a"])
    assert r.exit_code == 0, r.output
    assert endpoints.find_endpoint("a")["dedicated_ai_cluster_id"] == c["id"]
    r = runner.invoke(app, ["endpoints", "create", "--model", "tiny", "--cluster", c["id"][:-4], "--name", "b"])
    assert r.exit_code == 0, r.output
    assert endpoints.find_endpoint("b")["dedicated_ai_cluster_id"] == c["id"]
    r = runner.invoke(app, ["endpoints", "create", "--model", "tiny", "--cluster", "cs-nope"])
    assert r.exit_code == 2 and "no dedicated AI cluster" in r.output
