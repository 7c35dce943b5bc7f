"""Deleting a file or a custom model deletes its bytes on disk: blobs, weights, checkpoint models, the job's
training directory; refused (409) while something depends on it; a failure midway leaves rows and bytes
together."""

from __future__ import annotations

import io
import time

import pytest

from graftlm.config import get_settings
from graftlm.errors import GraftError, NotFound
from graftlm.store.db import session
from graftlm.store.models import Cluster, Endpoint, FineTuningJob, JobCheckpoint, Model

SECRET_BYTES = b"weights derived from the training data 536-22-1234"
MODEL = "ft:tiny:mine:ftjob-1"


def all_bytes_under(root) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


def make_custom_model(job_status: str = "succeeded", steps=(2, 4)) -> dict:
    """A custom model as a finished job leaves it: its weights, a checkpoint model per step, the job's
    training directory (checkpoints), the job's checkpoint rows."""
    settings = get_settings()
    paths = {}
    model_dir = settings.models_dir / MODEL.replace(":", "_")
    model_dir.mkdir(parents=True)
    (model_dir / "adapter_model.safetensors").write_bytes(SECRET_BYTES)
    paths[MODEL] = model_dir
    job_dir = settings.jobs_dir / "ftjob-1"
    (job_dir / "checkpoints" / "step-000004").mkdir(parents=True)
    (job_dir / "checkpoints" / "step-000004" / "optimizer.pt").write_bytes(SECRET_BYTES)
    paths["job"] = job_dir
    with session() as s:
        s.add(FineTuningJob(id="ftjob-1", model="tiny", training_file="file-x", status=job_status, config={},
                            suffix="mine", fine_tuned_model=MODEL))
        s.flush()
        s.add(Model(id=MODEL, kind="custom", parent="tiny", path=str(model_dir), adapter_type="lora",
                    lineage={"job_id": "ftjob-1"}))
        for step in steps:
            ckpt_id = f"{MODEL}:ckpt-step-{step}"
            d = settings.models_dir / ckpt_id.replace(":", "_")
            d.mkdir()
            (d / "adapter_model.safetensors").write_bytes(SECRET_BYTES)
            paths[ckpt_id] = d
            s.add(Model(id=ckpt_id, kind="custom", parent="tiny", path=str(d), adapter_type="lora",
                        lineage={"job_id": "ftjob-1", "checkpoint_step": step}))
            s.add(JobCheckpoint(id=f"ftckpt-{step}", job_id="ftjob-1", step_number=step, metrics={},
                                path=str(job_dir / "checkpoints" / f"step-{step:06d}")))
    return paths


def test_deleting_a_custom_model_removes_its_weights_checkpoints_and_training_directory(tiny_model):
    from graftlm.models.deletion import delete_model

    paths = make_custom_model()
    settings = get_settings()
    assert SECRET_BYTES in all_bytes_under(settings.models_dir)
    out = delete_model(MODEL)
    assert out["deleted"] and sorted(out["deleted_models"]) == sorted(k for k in paths if k != "job")
    for p in paths.values():
        assert not p.exists()
    assert SECRET_BYTES not in all_bytes_under(settings.models_dir)  # no copy, no leftover aside
    assert SECRET_BYTES not in all_bytes_under(settings.jobs_dir)
    assert not list(settings.models_dir.glob(".deleted-*")) and not list(settings.jobs_dir.glob(".deleted-*"))
    with session() as s:
        assert s.query(Model).filter(Model.kind == "custom").count() == 0
        assert s.query(JobCheckpoint).count() == 0
        job = s.get(FineTuningJob, "ftjob-1")
        assert job.fine_tuned_model == MODEL  # the job's history stays
    base = settings.models_dir / "tiny"
    assert (base / "config.json").exists()  # the base model is untouched
    with pytest.raises(NotFound):
        delete_model(MODEL)


def test_a_checkpoint_model_alone_takes_only_its_own_directory(tiny_model):
    from graftlm.models.deletion import delete_model

    paths = make_custom_model()
    delete_model(f"{MODEL}:ckpt-step-2")
    assert not paths[f"{MODEL}:ckpt-step-2"].exists()
    assert paths[MODEL].exists() and paths[f"{MODEL}:ckpt-step-4"].exists() and paths["job"].exists()


def test_deletion_is_refused_while_something_depends_on_the_model(tiny_model):
    from graftlm.models.deletion import delete_model

    paths = make_custom_model(job_status="running")
    with pytest.raises(GraftError) as e:
        delete_model(MODEL)
    assert e.value.status_code == 409 and "ftjob-1" in e.value.message
    with session() as s:
        s.get(FineTuningJob, "ftjob-1").status = "succeeded"
        s.add(Cluster(id="c1", name="c1", type="HOSTING", unit_count=1, lifecycle_state="ACTIVE"))
        s.flush()
        s.add(Endpoint(id="ep1", name="support", model=f"{MODEL}:ckpt-step-4", dedicated_ai_cluster_id="c1",
                       lifecycle_state="ACTIVE"))
    with pytest.raises(GraftError) as e:
        delete_model(MODEL)
    assert e.value.status_code == 409 and "support" in e.value.message
    assert all(p.exists() for p in paths.values())
    with session() as s:
        s.get(Endpoint, "ep1").lifecycle_state = "DELETED"
    delete_model(MODEL)  # a deleted endpoint does not hold it (its row goes with the model)
    assert not any(p.exists() for p in paths.values())
    with pytest.raises(GraftError) as e:
        delete_model("tiny")
    assert e.value.status_code == 403 and e.value.code == "base_model_not_deletable"


def test_a_failure_midway_leaves_rows_and_bytes_together(tiny_model, monkeypatch):
    from graftlm.models import deletion
    from graftlm.store import trash

    paths = make_custom_model()
    real = trash.move_aside
    calls = []

    def fail_on_the_third(p):
        calls.append(p)
        if len(calls) == 3:
            raise OSError("disk gone")
        return real(p)
    monkeypatch.setattr(trash, "move_aside", fail_on_the_third)
    with pytest.raises(OSError):
        deletion.delete_model(MODEL)
    assert all(p.exists() for p in paths.values())  # what was moved aside is back
    with session() as s:
        assert s.get(Model, MODEL) is not None and s.query(JobCheckpoint).count() == 2
    monkeypatch.setattr(trash, "move_aside", real)
    # a crash after the commit leaves a .deleted-* directory: the next deletion's sweep removes it once stale
    aside = real(paths[f"{MODEL}:ckpt-step-2"])
    assert deletion.sweep() == []  # too young (ctime of the rename): it may belong to a deletion still committing
    time.sleep(0.05)
    assert deletion.sweep(older_than_s=0.01) == [aside] and not aside.exists()


def test_api_and_cli_delete_a_model(http, tiny_model):
    paths = make_custom_model()
    r = http.delete(f"/v1/models/{MODEL}")
    assert r.status_code == 200 and r.json()["deleted"] is True, r.text
    assert not any(p.exists() for p in paths.values())
    assert http.get(f"/v1/models/{MODEL}").status_code == 404
    r = http.delete("/v1/models/tiny")
    assert r.status_code == 403 and r.json()["error"]["param"] == "model"


def test_cli_models_delete(tiny_model):
    from typer.testing import CliRunner

    from graftlm.cli import app

    paths = make_custom_model()
    result = CliRunner().invoke(app, ["models", "delete", MODEL, "--yes"])
    assert result.exit_code == 0, result.output
    assert not paths[MODEL].exists()


def test_deleting_a_file_removes_its_blob_unless_another_file_shares_it():
    from graftlm.files import service

    data = b'{"text": "the bytes of a file, 536-22-1234"}\n'
    a = service.create_file(io.BytesIO(data), "a.jsonl", "fine-tune")
    b = service.create_file(io.BytesIO(data), "b.jsonl", "fine-tune")
    blob = service.file_path(a["id"])
    service.delete_file(a["id"])
    assert blob.read_bytes() == data  # b still names these bytes
    service.delete_file(b["id"])
    assert not blob.exists()
    root = get_settings().blobs_dir
    assert data not in all_bytes_under(root)


def test_a_file_used_by_a_running_job_is_not_deleted(tiny_model):
    from graftlm.files import service

    f = service.create_file(io.BytesIO(b'{"text": "x"}\n'), "a.jsonl", "fine-tune")
    with session() as s:
        s.add(FineTuningJob(id="ftjob-9", model="tiny", training_file=f["id"], status="running", config={}))
    with pytest.raises(GraftError) as e:
        service.delete_file(f["id"])
    assert e.value.status_code == 409
    assert service.file_path(f["id"]).exists()
