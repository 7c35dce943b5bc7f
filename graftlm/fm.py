"""Databricks-style Python SDK: ``from graftlm import fm; run = fm.create(...)``.

Embedded by default (jobs run on this machine's GRAFT_HOME, scheduled from this process); set
``fm.connect(base_url, api_key, project=None)`` or GRAFT_BASE_URL / GRAFT_API_KEY (/ GRAFT_PROJECT) to drive a
running server instead; a project key acts in its project, the instance admin key in ``project`` (else default).
The keyword names are Databricks' (``train_data_path``, ``training_duration``, ``register_to``) and
map onto graftlm's one hyperparameter schema; any other OCI hyperparameter may be passed by name.
``fm.evals`` creates eval sets and runs them (``fm.evals.create(...)``, ``fm.evals.run(eval_id, model)``).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from graftlm.errors import GraftError

_remote: dict | None = None


@dataclass
class Run:
    id: str
    model: str
    status: str
    fine_tuned_model: str | None
    error: dict | None
    hyperparameters: dict
    created_at: int
    finished_at: int | None

    @classmethod
    def from_job(cls, job: dict) -> "Run":
        return cls(job["id"], job["model"], job["status"], job["fine_tuned_model"], job["error"],
                   job["hyperparameters"], job["created_at"], job["finished_at"])


def connect(base_url: str | None = None, api_key: str | None = None, project: str | None = None) -> None:
    """Drive a graftlm server (``http://host:port/v1``); ``connect()`` with no URL goes back to embedded.
    ``project`` is sent as the OpenAI-Project header (as the openai client's ``project=``)."""
    global _remote
    _remote = {"base_url": base_url.rstrip("/"), "api_key": api_key, "project": project} if base_url else None


def _client():
    import httpx

    remote = _remote or ({"base_url": os.environ["GRAFT_BASE_URL"].rstrip("/"),
                          "api_key": os.environ.get("GRAFT_API_KEY"), "project": os.environ.get("GRAFT_PROJECT")}
                         if os.environ.get("GRAFT_BASE_URL") else None)
    if remote is None:
        return None
    headers = {"Authorization": f"Bearer {remote['api_key'] or ''}"}
    if remote.get("project"):
        headers["OpenAI-Project"] = remote["project"]
    return httpx.Client(base_url=remote["base_url"], timeout=120, headers=headers)


def _call(client, method: str, path: str, **kwargs) -> dict:
    r = client.request(method, path, **kwargs)
    if r.status_code >= 400:
        err = r.json().get("error", {})
        raise GraftError(err.get("message", r.text), param=err.get("param"), code=err.get("code"),
                         status_code=r.status_code)
    return r.json()


def shutdown() -> None:
    """Stop the embedded scheduler this process started (running jobs go on in their own processes)."""
    from graftlm.jobs.embedded import stop_scheduler

    stop_scheduler()


def _upload(client, path: str | None, param: str, data_policy: str | None = None) -> str | None:
    if path is None:
        return None
    if path.startswith("file-"):
        return path
    if not Path(path).exists():
        raise GraftError(f"{path} does not exist", param=param)
    if client is not None:
        with open(path, "rb") as fh:
            return _call(client, "POST", "/files", files={"file": (Path(path).name, fh)},
                         data={"purpose": "fine-tune"} | ({"data_policy": data_policy} if data_policy else {}))["id"]
    from graftlm.files.service import upload_local

    return upload_local(path, data_policy=data_policy)


def create(model: str, train_data_path: str, *, register_to: str | None = None,
           training_duration: str | None = None, learning_rate: float | None = None,
           training_method: str | None = None, method: str | None = None, task_type: str | None = None,
           eval_data_path: str | None = None, context_length: int | None = None, seed: int | None = None,
           cluster: str | None = None, data_policy: str | None = None, **hyperparameters) -> Run:
    """Start a fine-tuning run; returns at once (``fm.wait(run)`` blocks until it ends). The request is a
    graftlm.jobs.spec.JobSpec; a hyperparameter left out takes the schema's default (training_method lora).
    ``cluster`` (a FINE_TUNING cluster's id; embedded, also a unique id prefix or its name) runs it on one rank
    per unit of the cluster (``dedicated_ai_cluster_id``). ``data_policy`` (warn | redact | reject) applies to
    the local files it uploads (personal data in them, see the README's Personal data section)."""
    from graftlm.jobs.spec import JobSpec

    named = {"training_method": training_method or method, "task_type": task_type,
             "training_duration": training_duration, "learning_rate": learning_rate, "context_length": context_length}
    hyper = {k: v for k, v in named.items() if v is not None} | hyperparameters
    client = _client()
    if client is not None:
        with client:
            spec = JobSpec.parse({"model": model, "suffix": register_to, "seed": seed, "hyperparameters": hyper,
                                  "dedicated_ai_cluster_id": cluster,
                                  "training_file": _upload(client, train_data_path, "train_data_path", data_policy),
                                  "validation_file": _upload(client, eval_data_path, "eval_data_path",
                                                             data_policy)})
            return Run.from_job(_call(client, "POST", "/fine_tuning/jobs", json=spec.model_dump(exclude_none=True)))
    from graftlm.clusters.clusters import resolve_cluster_id
    from graftlm.jobs import service
    from graftlm.jobs.embedded import ensure_scheduler

    spec = JobSpec.parse({"model": model, "suffix": register_to, "seed": seed, "hyperparameters": hyper,
                          "dedicated_ai_cluster_id": resolve_cluster_id(cluster) if cluster else None,
                          "training_file": _upload(None, train_data_path, "train_data_path", data_policy),
                          "validation_file": _upload(None, eval_data_path, "eval_data_path", data_policy)})
    job = service.submit_job(spec)
    ensure_scheduler()
    return Run.from_job(job)


def _id(run: Run | str) -> str:
    return run.id if isinstance(run, Run) else run


def get(run: Run | str) -> Run:
    client = _client()
    if client is not None:
        with client:
            return Run.from_job(_call(client, "GET", f"/fine_tuning/jobs/{_id(run)}"))
    from graftlm.jobs import service

    return Run.from_job(service.get_job(_id(run)))


def list(limit: int = 20) -> list[Run]:  # noqa: A001 - the SDK's verb
    client = _client()
    if client is not None:
        with client:
            return [Run.from_job(j) for j in _call(client, "GET", "/fine_tuning/jobs", params={"limit": limit})["data"]]
    from graftlm.jobs import service

    return [Run.from_job(j) for j in service.list_jobs(limit=limit)["data"]]


def cancel(run: Run | str) -> Run:
    client = _client()
    if client is not None:
        with client:
            return Run.from_job(_call(client, "POST", f"/fine_tuning/jobs/{_id(run)}/cancel"))
    from graftlm.jobs import service

    return Run.from_job(service.request_action(_id(run), "cancel"))


def get_events(run: Run | str, limit: int = 1000) -> list[dict]:
    """Events oldest first (messages and metrics)."""
    client = _client()
    if client is None:
        from graftlm.jobs.embedded import events_oldest_first

        return events_oldest_first(_id(run), limit)
    with client:
        return _call(client, "GET", f"/fine_tuning/jobs/{_id(run)}/events", params={"limit": limit})["data"][::-1]


def wait(run: Run | str, timeout: float = 3600, poll: float = 0.5) -> Run:
    """Block until the run succeeds, fails, is cancelled or paused."""
    if _client() is None:
        from graftlm.jobs.embedded import wait_for_job

        return Run.from_job(wait_for_job(_id(run), timeout=timeout, poll=poll))
    deadline = time.time() + timeout
    while True:
        current = get(run)
        if current.status in ("succeeded", "failed", "cancelled", "paused"):
            return current
        if time.time() > deadline:
            raise TimeoutError(f"run {current.id} is still {current.status}")
        time.sleep(poll)


# evals ---------------------------------------------------------------------------------------------

def _dispatch(method: str, path: str, local, **request) -> dict:
    """Call the server when connected, else ``local()`` on this machine's GRAFT_HOME."""
    client = _client()
    if client is None:
        return local()
    with client:
        return _call(client, method, path, **request)


class Evals:
    """``fm.evals``: eval sets and their runs, the same calls as ``/v1/evals``.

    Scorers are names from graftlm.evals.scorers or ``"judge:<model>"``. Against a server, ``data_path``
    and ``train_path`` are paths on the server.
    """

    def create(self, name: str, data_path: str, scorers=("label_accuracy",), *,
               description: str | None = None) -> dict:
        from graftlm.evals import service

        body = {"name": name, "data_path": str(data_path), "scorers": [*scorers], "description": description}
        return _dispatch("POST", "/evals", lambda: service.define_eval(**body), json=body)

    def list(self) -> list[dict]:  # noqa: A003 - the SDK's verb
        from graftlm.evals import store

        return _dispatch("GET", "/evals", lambda: {"data": store.list_evals()})["data"]

    def get(self, eval_id: str) -> dict:
        from graftlm.evals import store

        return _dispatch("GET", f"/evals/{eval_id}", lambda: store.get_eval(eval_id))

    def run(self, eval_id: str, model: str, **options) -> dict:
        """Run the eval on ``model`` now (blocking); the run without per-example results.
        options: strategy, k, train_path, kb_id, max_examples, max_tokens, failures (store failure clusters)."""
        from graftlm.evals import service

        options = service.RunOptions.parse(options).model_dump(exclude_unset=True)
        return _dispatch("POST", f"/evals/{eval_id}/runs", lambda: service.run_defined_eval(eval_id, model, **options),
                         json={"model": model, **options}, timeout=None)

    def list_runs(self, eval_id: str) -> list[dict]:
        from graftlm.evals import service, store

        local = lambda: {"data": [service.run_summary(r) for r in store.list_runs(eval_id)]}  # noqa: E731
        return _dispatch("GET", f"/evals/{eval_id}/runs", local)["data"]

    def get_run(self, eval_id: str, run_id: str) -> dict:
        """One run with its per-example results."""
        from graftlm.evals import store

        return _dispatch("GET", f"/evals/{eval_id}/runs/{run_id}", lambda: store.get_run(run_id, eval_id))


evals = Evals()
