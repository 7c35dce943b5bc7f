"""Issue 16 items 5, 10, 11: an endpoint is warmed (engine + adapter loaded, logged with the time) when it is
created; a deterministic hosting cluster serves in fp32 whatever GRAFT_DTYPE says, and its greedy answers do
not depend on the rest of the batch; usage shows commitment and use side by side, and cluster creation says
what it commits to."""

from __future__ import annotations

import logging

import pytest
import torch

from graftlm.clusters import clusters, endpoints, metering
from graftlm.store.db import session
from graftlm.store.models import Model


@pytest.fixture
def lora_model(tiny_model, tmp_path):
    from graftlm.testing.adapters import make_peft_adapter

    path = make_peft_adapter(tiny_model["path"], tmp_path / "lora", kind="lora", r=4)
    with session() as s:
        s.add(Model(id="ft:tiny:lora:1", kind="custom", parent="tiny", path=str(path), adapter_type="lora"))
    return "ft:tiny:lora:1"


def _settle(runtime):
    for thread in runtime.warming:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in runtime.warming)


def test_an_endpoint_is_warm_when_created_and_loading_is_logged(lora_model, caplog):
    from graftlm.clusters.hosting import get_runtime

    runtime = get_runtime()
    caplog.set_level(logging.INFO, logger="graftlm.serve")
    c = clusters.create_cluster("HOSTING", base_model="tiny", name="warm")
    endpoints.create_endpoint(lora_model, c["id"], "warm-lora")
    _settle(runtime)
    engine = runtime.engines[f"cluster:{c['id']}"]  # started by the warm-up, before any request
    assert lora_model in engine.adapters.paths
    assert lora_model in engine.adapters.cpu or lora_model in engine.adapters.resident
    messages = [r.getMessage() for r in caplog.records]
    assert any("serving engine" in m and "loaded in" in m for m in messages), messages
    assert any(m.startswith("endpoint warm-lora") and "warm in" in m for m in messages), messages


def test_warming_can_be_turned_off(lora_model, monkeypatch):
    from graftlm.clusters.hosting import get_runtime
    from graftlm.config import reset_settings

    monkeypatch.setenv("GRAFT_WARM_ENDPOINTS", "false")
    reset_settings()
    runtime = get_runtime()
    c = clusters.create_cluster("HOSTING", base_model="tiny")
    endpoints.create_endpoint(lora_model, c["id"], "cold")
    assert not runtime.warming and not runtime.engines


def test_a_deterministic_cluster_serves_fp32_and_is_batch_invariant(lora_model, monkeypatch):
    from graftlm.clusters.hosting import get_runtime
    from graftlm.config import reset_settings
    from graftlm.serve.engine import SamplingParams

    monkeypatch.setenv("GRAFT_DTYPE", "bfloat16")
    reset_settings()
    runtime = get_runtime()
    fast = clusters.create_cluster("HOSTING", base_model="tiny", name="fast")
    exact = clusters.create_cluster("HOSTING", base_model="tiny", name="exact", deterministic=True)
    assert exact["deterministic"] and not fast["deterministic"]
    endpoints.create_endpoint(lora_model, fast["id"], "fast-ep")
    endpoints.create_endpoint(lora_model, exact["id"], "exact-ep")
    _settle(runtime)
    assert runtime.resolve("fast-ep").engine.dtype == torch.bfloat16
    target = runtime.resolve("exact-ep")
    assert target.engine.dtype == torch.float32 and target.engine is not runtime.resolve("fast-ep").engine

    greedy = SamplingParams(temperature=0, max_tokens=12)
    prompt = target.engine.tokenizer("a question to answer the same way")["input_ids"]
    alone = target.engine.generate([(prompt, greedy, lora_model)])[0].token_ids
    others = [(target.engine.tokenizer(f"other request {i} " * (i + 1))["input_ids"], greedy,
               None if i % 2 else lora_model) for i in range(7)]
    batched = target.engine.generate([*others[:3], (prompt, greedy, lora_model), *others[3:]])[3].token_ids
    assert batched == alone


def test_deterministic_is_for_hosting_clusters_only(tiny_model):
    from graftlm.errors import GraftError

    with pytest.raises(GraftError) as e:
        clusters.create_cluster("FINE_TUNING", deterministic=True)
    assert e.value.param == "deterministic"


def test_usage_shows_commitment_and_use_side_by_side(tiny_model):
    c = clusters.create_cluster("HOSTING", base_model="tiny", name="h", unit_count=2)
    created = clusters.get_cluster(c["id"])["created_at"]
    report = metering.usage_report(at=created + 45 * 60)  # 45 minutes later
    row = next(r for r in report["data"] if r["dedicated_ai_cluster_id"] == c["id"])
    assert row["committed_unit_hours"] == 744
    assert row["used_unit_hours"] == pytest.approx(1.5, abs=0.05)  # 2 units × 0.75 h
    assert row["unit_hours"] == 744  # billed: the larger of the two


def test_cli_usage_and_cluster_create_say_what_is_committed(tiny_model):
    from typer.testing import CliRunner

    from graftlm.cli.main import app

    runner = CliRunner()
    r = runner.invoke(app, ["clusters", "create", "--type", "HOSTING", "--base-model", "tiny", "--name", "p",
                            "--deterministic"])
    assert r.exit_code == 0, r.output
    assert "commitment:" in r.output and "744" in r.output and "deterministic" in r.output
    r = runner.invoke(app, ["usage"], terminal_width=200)
    assert r.exit_code == 0, r.output
    assert "committed" in r.output and "used" in r.output and "744.00" in r.output
