"""Hosting clusters, endpoint capacity and lifecycle, and unit-hour metering."""

from __future__ import annotations

import pytest

from graftlm.clusters import clusters, endpoints, metering
from graftlm.errors import Conflict, GraftError, NotFound
from graftlm.store.db import session
from graftlm.store.models import Cluster, Model


def add_custom(model_id: str, parent: str, path: str = "/nonexistent") -> None:
    with session() as s:
        s.add(Model(id=model_id, kind="custom", parent=parent, path=path, adapter_type="lora"))


def test_capacity_counts_every_endpoint_and_refuses_the_51st(lora_of_tiny):
    c = clusters.create_cluster("HOSTING", base_model="tiny", name="h")
    assert c["total_endpoint_capacity"] == 50 and c["used_endpoint_capacity"] == 0
    endpoints.create_endpoint("tiny", c["id"], "base")
    for i in range(49):  # several endpoints may serve the same model
        endpoints.create_endpoint(lora_of_tiny, c["id"], f"ep{i}")
    assert clusters.get_cluster(c["id"])["used_endpoint_capacity"] == 50
    with pytest.raises(Conflict) as e:
        endpoints.create_endpoint("tiny", c["id"], "one-too-many")
    assert e.value.code == "endpoint_capacity_exceeded"
    endpoints.delete_endpoint(endpoints.find_endpoint("ep0")["id"])
    assert clusters.get_cluster(c["id"])["used_endpoint_capacity"] == 49
    endpoints.create_endpoint("tiny", c["id"], "fits-again")


def test_custom_model_of_another_base_is_refused(tiny_model, tiny_model_dir):
    from graftlm.models.catalog import import_model

    import_model(tiny_model_dir, "other-base")
    add_custom("ft:other-base:x:1", "other-base")
    c = clusters.create_cluster("HOSTING", base_model="tiny")
    with pytest.raises(GraftError) as e:
        endpoints.create_endpoint("ft:other-base:x:1", c["id"])
    assert e.value.code == "base_model_mismatch" and e.value.status_code == 400


def test_deactivate_and_activate(tiny_model):
    events = []
    endpoints.listeners.append(lambda ep, ev: events.append((ep["name"], ev)))
    try:
        c = clusters.create_cluster("HOSTING", base_model="tiny")
        ep = endpoints.create_endpoint("tiny", c["id"], "main")
        assert endpoints.deactivate_endpoint(ep["id"])["lifecycle_state"] == "INACTIVE"
        with pytest.raises(GraftError) as e:
            endpoints.require_active(endpoints.find_endpoint("main"))
        assert e.value.code == "endpoint_inactive" and e.value.status_code == 409
        assert endpoints.activate_endpoint(ep["id"])["lifecycle_state"] == "ACTIVE"
        endpoints.require_active(endpoints.find_endpoint("main"))
        assert events == [("main", "activated"), ("main", "deactivated"), ("main", "activated")]
    finally:
        endpoints.listeners.clear()


def test_cluster_validation_errors(tiny_model):
    with pytest.raises(GraftError) as e:
        clusters.create_cluster("HOSTING")
    assert e.value.param == "base_model"
    with pytest.raises(GraftError) as e:
        clusters.create_cluster("HOSTING", base_model="tiny", unit_count=0)
    assert e.value.param == "unit_count"
    with pytest.raises(NotFound):
        clusters.create_cluster("HOSTING", base_model="missing")
    ft = clusters.create_cluster("FINE_TUNING")
    assert ft["unit_count"] == 2
    with pytest.raises(GraftError):
        endpoints.create_endpoint("tiny", ft["id"])


def test_cluster_with_endpoints_cannot_be_deleted(tiny_model):
    c = clusters.create_cluster("HOSTING", base_model="tiny")
    ep = endpoints.create_endpoint("tiny", c["id"])
    with pytest.raises(Conflict):
        clusters.delete_cluster(c["id"])
    endpoints.delete_endpoint(ep["id"])
    assert clusters.delete_cluster(c["id"])["lifecycle_state"] == "DELETED"
    with pytest.raises(NotFound):
        clusters.get_cluster(c["id"])


def test_usage_reproduces_the_spec_example(tiny_model):
    """2-unit fine-tuning cluster × 5 h a week × 4 weeks = 40; plus one hosting cluster 744 → 784."""
    t0 = 1_000_000.0
    ft = clusters.create_cluster("FINE_TUNING", unit_count=2)
    with session() as s:
        cluster = s.get(Cluster, ft["id"])
        for week in range(4):
            start = t0 + week * 7 * 86400
            rec = metering.open_span(s, cluster, minimum_unit_hours=1.0, job_id=f"job{week}", started_at=start)
            rec.ended_at = start + 5 * 3600
    hosting = clusters.create_cluster("HOSTING", base_model="tiny")
    report = metering.usage_report(price_per_unit_hour=10.0, at=None)
    rows = {r["dedicated_ai_cluster_id"]: r for r in report["data"]}
    assert rows[ft["id"]]["unit_hours"] == pytest.approx(40.0)
    assert rows[hosting["id"]]["unit_hours"] == pytest.approx(744.0)  # the monthly commitment
    assert report["total_unit_hours"] == pytest.approx(784.0)
    assert report["cost"] == pytest.approx(7840.0)


def test_a_short_job_bills_one_unit_hour(tiny_model):
    ft = clusters.create_cluster("FINE_TUNING", unit_count=2)
    metering.start_job(ft["id"], "job-short")
    metering.end_job("job-short")
    rows = {r["dedicated_ai_cluster_id"]: r for r in metering.usage_report()["data"]}
    assert rows[ft["id"]]["unit_hours"] == pytest.approx(1.0)


def test_clusters_and_endpoints_over_http(http, tiny_model):
    r = http.post("/v1/dedicated_ai_clusters", json={"type": "HOSTING", "unit_count": 1, "base_model": "tiny",
                                                      "name": "h"})
    assert r.status_code == 200 and r.json()["lifecycle_state"] == "ACTIVE"
    cid = r.json()["id"]
    r = http.post("/v1/endpoints", json={"model": "tiny", "dedicated_ai_cluster_id": cid, "name": "base"})
    assert r.status_code == 200
    eid = r.json()["id"]
    assert http.post(f"/v1/endpoints/{eid}/deactivate").json()["lifecycle_state"] == "INACTIVE"
    assert http.post(f"/v1/endpoints/{eid}/activate").json()["lifecycle_state"] == "ACTIVE"
    assert http.patch(f"/v1/endpoints/{eid}", json={"name": "renamed"}).json()["name"] == "renamed"
    assert http.get("/v1/dedicated_ai_clusters").json()["data"][0]["used_endpoint_capacity"] == 1
    r = http.post("/v1/dedicated_ai_clusters", json={"type": "GPU"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "type"
    assert http.get("/v1/endpoints/ep-missing").status_code == 404
    assert http.get("/v1/usage").json()["total_unit_hours"] >= 744


@pytest.fixture
def lora_of_tiny(tiny_model, tmp_path):
    """A real LoRA custom model `ft:tiny:lora:1` of `tiny` (the runtime reads its adapter config)."""
    from graftlm.testing.adapters import make_peft_adapter

    path = make_peft_adapter(tiny_model["path"], tmp_path / "lora", kind="lora", r=4)
    add_custom("ft:tiny:lora:1", "tiny", str(path))
    return "ft:tiny:lora:1"


def test_base_model_and_its_custom_model_on_one_cluster_share_one_engine(lora_of_tiny):
    from graftlm.clusters.hosting import get_runtime

    c = clusters.create_cluster("HOSTING", base_model="tiny")
    endpoints.create_endpoint(lora_of_tiny, c["id"], "lora-ep")
    runtime = get_runtime()
    direct = runtime.resolve("tiny")  # before any endpoint request: must not load a second copy of tiny
    via_endpoint = runtime.resolve("lora-ep")
    assert direct.engine is via_endpoint.engine is runtime.resolve(lora_of_tiny).engine
    assert list(runtime.engines) == [f"cluster:{c['id']}"]


def test_a_cluster_created_later_adopts_the_engine_already_serving_its_base(lora_of_tiny):
    from graftlm.clusters.hosting import get_runtime

    runtime = get_runtime()
    before = runtime.resolve("tiny").engine  # no cluster yet: the per-base engine
    c = clusters.create_cluster("HOSTING", base_model="tiny")
    endpoints.create_endpoint(lora_of_tiny, c["id"], "lora-ep")
    assert runtime.resolve("lora-ep").engine is before
    assert list(runtime.engines) == [f"cluster:{c['id']}"]


def test_deleting_a_cluster_stops_and_releases_its_engine(tiny_model):
    from graftlm.clusters.hosting import get_runtime
    from graftlm.serve import EngineUnavailable

    c = clusters.create_cluster("HOSTING", base_model="tiny")
    ep = endpoints.create_endpoint("tiny", c["id"], "base")
    runtime = get_runtime()
    engine = runtime.resolve("base").engine
    endpoints.delete_endpoint(ep["id"])
    clusters.delete_cluster(c["id"])
    assert f"cluster:{c['id']}" not in runtime.engines and engine._thread is None
    with pytest.raises(EngineUnavailable, match="stopped"):
        engine.submit([1, 2, 3])
    assert runtime.resolve("tiny").engine is not engine  # a later direct request starts a fresh engine


def page_through(http, path: str, limit: int, **params) -> list[list[str]]:
    pages, after = [], None
    while True:
        r = http.get(path, params={**params, "limit": limit, **({"after": after} if after else {})})
        assert r.status_code == 200, r.text
        body = r.json()
        pages.append([item["id"] for item in body["data"]])
        if not body["has_more"]:
            return pages
        after = pages[-1][-1]


def test_cluster_and_endpoint_lists_page_with_after_and_limit(http, tiny_model):
    cids = [clusters.create_cluster("HOSTING", base_model="tiny", name=f"h{i}")["id"] for i in range(3)]
    eids = [endpoints.create_endpoint("tiny", cids[0], f"ep{i}")["id"] for i in range(3)]
    endpoints.create_endpoint("tiny", cids[1], "elsewhere")
    everything = [c["id"] for c in http.get("/v1/dedicated_ai_clusters").json()["data"]]
    assert sorted(everything) == sorted(cids)
    pages = page_through(http, "/v1/dedicated_ai_clusters", 2)
    assert [len(p) for p in pages] == [2, 1] and sum(pages, []) == everything
    pages = page_through(http, "/v1/endpoints", 2, dedicated_ai_cluster_id=cids[0])
    assert [len(p) for p in pages] == [2, 1] and sorted(sum(pages, [])) == sorted(eids)
    assert len(page_through(http, "/v1/endpoints", 1)) == 4
    for path in ("/v1/dedicated_ai_clusters", "/v1/endpoints"):
        for params, status in (({"limit": 0}, 400), ({"limit": 1001}, 400), ({"limit": "x"}, 400),
                               ({"after": "no-such-id"}, 404)):
            r = http.get(path, params=params)
            assert r.status_code == status and r.json()["error"]["param"] in ("limit", "after"), (path, params)


def test_an_endpoint_whose_model_files_are_missing_or_broken_is_refused(http, lora_of_tiny):
    """Refused up front with a 400 naming the problem, not created to fail its first request."""
    import shutil
    from pathlib import Path

    from graftlm.models.catalog import get_model

    c = clusters.create_cluster("HOSTING", base_model="tiny")
    path = Path(get_model(lora_of_tiny)["path"])
    shutil.copytree(path, path.with_name("good"))
    breakages = [("adapter_config.json", lambda f: f.unlink(), "no adapter_config.json"),
                 ("adapter_model.safetensors", lambda f: f.unlink(), "FileNotFoundError"),
                 ("adapter_model.safetensors", lambda f: f.write_bytes(b"\x10" + b"\x00" * 7 + b"{not json"),
                  "JSONDecodeError")]
    for file, breakage, problem in breakages:
        breakage(path / file)
        r = http.post("/v1/endpoints", json={"model": lora_of_tiny, "dedicated_ai_cluster_id": c["id"]})
        assert r.status_code == 400, (file, r.text)
        error = r.json()["error"]
        assert error["code"] == "model_files_unreadable" and error["param"] == "model"
        assert lora_of_tiny in error["message"] and str(path) in error["message"] and problem in error["message"]
        shutil.rmtree(path)
        shutil.copytree(path.with_name("good"), path)
    assert clusters.get_cluster(c["id"])["used_endpoint_capacity"] == 0
    ep = endpoints.create_endpoint(lora_of_tiny, c["id"], "ok")
    endpoints.deactivate_endpoint(ep["id"])
    (path / "adapter_config.json").unlink()
    r = http.post(f"/v1/endpoints/{ep['id']}/activate")  # files lost while inactive: refused, stays INACTIVE
    assert r.status_code == 400 and "adapter_config.json" in r.json()["error"]["message"]
    assert endpoints.get_endpoint(ep["id"])["lifecycle_state"] == "INACTIVE"


def test_model_files_lost_after_deployment_answer_409_not_500(http, lora_of_tiny):
    from pathlib import Path

    from graftlm.models.catalog import get_model

    c = clusters.create_cluster("HOSTING", base_model="tiny")
    endpoints.create_endpoint(lora_of_tiny, c["id"], "lora-ep")
    (Path(get_model(lora_of_tiny)["path"]) / "adapter_model.safetensors").unlink()
    body = {"model": "lora-ep", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 409, r.text
    error = r.json()["error"]
    assert error["code"] == "model_files_unreadable" and "FileNotFoundError" in error["message"]
