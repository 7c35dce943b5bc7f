"""Issue 16 item 2: a checkpoint has one stable name (the same while the job runs and after), answers
chat completions by that name, and can be hosted on an endpoint like any custom model."""

from __future__ import annotations

from test_jobs import hyper, toy_dataset, upload, wait_job


def test_checkpoints_are_servable_and_hostable_under_one_name(client, http, tiny_model):
    from graftlm.jobs.service import checkpoint_model_id, list_checkpoints
    from graftlm.store.db import session
    from graftlm.store.models import FineTuningJob

    fid = upload(client, toy_dataset())
    job = client.fine_tuning.jobs.create(model="tiny", training_file=fid, suffix="toy",
                                         method=hyper(training_method="lora", n_epochs=2, batch_size=4))
    job = wait_job(client, job.id)
    assert job.status == "succeeded", job.error
    ckpts = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert len(ckpts) >= 2  # one per epoch's evaluation
    names = {c.fine_tuned_model_checkpoint for c in ckpts}
    assert names == {f"{job.fine_tuned_model}:ckpt-step-{c.step_number}" for c in ckpts}
    assert all(c.to_dict()["servable"] for c in ckpts)

    # the same names while the job runs (before fine_tuned_model is set)
    with session() as s:
        row = s.get(FineTuningJob, job.id)
        row.status, row.fine_tuned_model = "running", None
    assert {c["fine_tuned_model_checkpoint"] for c in list_checkpoints(job.id)["data"]} == names
    assert checkpoint_model_id("tiny", "toy", job.id, 4) in names

    # calling a checkpoint by its name answers
    first = min(ckpts, key=lambda c: c.step_number).fine_tuned_model_checkpoint
    r = client.chat.completions.create(model=first, messages=[{"role": "user", "content": "say hello"}],
                                       max_tokens=4, temperature=0)
    assert r.model == first and r.choices[0].message.content is not None
    assert any(m.id == first and m.parent == "tiny" for m in client.models.list().data)

    # and an endpoint can host it
    cid = http.post("/v1/dedicated_ai_clusters", json={"type": "HOSTING", "unit_count": 1, "base_model": "tiny",
                                                       "name": "ck"}).json()["id"]
    r = http.post("/v1/endpoints", json={"model": first, "dedicated_ai_cluster_id": cid, "name": "early"})
    assert r.status_code == 200, r.text
    r = client.chat.completions.create(model="early", messages=[{"role": "user", "content": "say hello"}],
                                       max_tokens=4, temperature=0)
    assert r.choices[0].message.content is not None
