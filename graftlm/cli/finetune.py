"""graft finetune create, graft jobs list|show|events|cancel|pause|resume, graft worker."""

from __future__ import annotations

import time
from typing import Optional

import typer
import yaml
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Column, Table

from graftlm.cli.common import console, friendly_errors, iso_time, print_json
from graftlm.clusters import clusters
from graftlm.errors import GraftError
from graftlm.files.service import upload_local
from graftlm.jobs import embedded, service
from graftlm.jobs.spec import JobSpec

app = typer.Typer(no_args_is_help=True)
jobs_app = typer.Typer(no_args_is_help=True)


@app.command("create")
@friendly_errors
def create(model: Optional[str] = typer.Option(None, "--model"),
           train: Optional[str] = typer.Option(None, "--train", help="training JSONL (path or file id)"),
           validation: Optional[str] = typer.Option(None, "--validation"),
           method: Optional[str] = typer.Option(None, "--method", help="tfew | lora | qlora | vanilla"),
           epochs: Optional[int] = typer.Option(None, "--epochs"),
           learning_rate: Optional[float] = typer.Option(None, "--learning-rate"),
           batch_size: Optional[int] = typer.Option(None, "--batch-size"),
           suffix: Optional[str] = typer.Option(None, "--suffix"),
           seed: Optional[int] = typer.Option(None, "--seed"),
           cluster: Optional[str] = typer.Option(None, "--cluster", help="a FINE_TUNING cluster (id, id prefix or "
                                                 "name): the job trains on one rank per unit"),
           config: Optional[str] = typer.Option(None, "--config", help="YAML job spec with the same fields"),
           set_: list[str] = typer.Option([], "--set", help="any hyperparameter as name=value"),
           data_policy: Optional[str] = typer.Option(None, "--data-policy",
                                                     help="for local files: warn | redact | reject (personal data; "
                                                          "default: the project's policy, warn)"),
           watch: bool = typer.Option(False, "--watch", help="run here and show progress")):
    """Create a fine-tuning job (embedded: runs on this machine's GRAFT_HOME); --cluster puts it on a
    FINE_TUNING cluster's ranks."""
    flags = {"training_method": method, "total_training_epochs": epochs, "learning_rate": learning_rate,
             "training_batch_size": batch_size}
    for item in set_:
        key, _, value = item.partition("=")
        flags[key] = yaml.safe_load(value)
    fields = {"model": model, "training_file": train, "validation_file": validation, "suffix": suffix, "seed": seed,
              "dedicated_ai_cluster_id": clusters.resolve_cluster_id(cluster) if cluster else None}
    if config:
        spec = JobSpec.from_yaml(config, **fields)
    elif not model or not train:
        raise GraftError("give --model and --train (or model and training_file in --config)", param="model")
    else:
        spec = JobSpec.parse({k: v for k, v in fields.items() if v is not None})
    hyper = (spec.hyperparameters or {}) | {k: v for k, v in flags.items() if v is not None}
    to_id = lambda f: f if f.startswith("file-") else uploaded(f, data_policy)  # noqa: E731
    spec = spec.model_copy(update={"hyperparameters": hyper, "training_file": to_id(spec.training_file),
                                   "validation_file": to_id(spec.validation_file) if spec.validation_file else None})
    job = service.submit_job(spec)
    world = (job["hyperparameters"].get("distributed") or {}).get("world_size") or 1
    console.print(f"created [bold]{job['id']}[/] ({job['hyperparameters']['training_method']}"
                  + (f", {world} ranks on {job['dedicated_ai_cluster_id']}" if world > 1 else "") + ")")
    if watch:
        watch_job(job["id"], run_here=True)
    elif not embedded.scheduler_running():
        console.print("the job starts when a scheduler picks it up: keep [bold]graft serve[/] or "
                      "[bold]graft worker[/] running (or pass --watch to run it here)")


def uploaded(path: str, data_policy: str | None) -> str:
    """Upload a local dataset under the data policy and say what it did with personal data."""
    from graftlm.files.service import get_file

    file_id = upload_local(path, data_policy=data_policy)
    record = get_file(file_id)
    sensitive = record.get("sensitive_data") or {}
    if sensitive.get("redacted_by_kind"):
        counts = ", ".join(f"{n} {k}" for k, n in sensitive["redacted_by_kind"].items())
        console.print(f"{path}: personal data replaced by placeholders in the stored copy ({counts})")
    elif record.get("status_details"):
        console.print(f"[yellow]{path}: {record['status_details']}[/]")
    return file_id


def time_left(job: dict, at: float) -> str:
    """``h:mm:ss`` until the job's ``estimated_finish`` (``-:--:--`` while there is none yet)."""
    if job.get("estimated_finish") is None:
        return "-:--:--"
    seconds = max(0, round(job["estimated_finish"] - at))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def watch_job(job_id: str, run_here: bool = False) -> dict:
    """Rich progress bar (step/total, loss, accuracy, time left from the job's estimated_finish) until
    the job finishes."""
    from graftlm.jobs.scheduler import Scheduler

    scheduler = Scheduler() if run_here else None
    seen = set()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[stats]}"), TextColumn("{task.fields[left]}"), console=console) as bar:
        task = bar.add_task(job_id, total=None, stats="", left="-:--:--")
        while True:
            if scheduler:
                scheduler.tick()
            job = service.get_job(job_id)
            bar.update(task, left=time_left(job, time.time()))
            for e in reversed(service.list_events(job_id, limit=50)["data"]):
                if e["id"] in seen:
                    continue
                seen.add(e["id"])
                d = e["data"] or {}
                if "total_steps" in d:
                    bar.update(task, total=d["total_steps"])
                if e["type"] == "metrics":
                    stats = f"loss {d['train_loss']:.3f} acc {d['train_mean_token_accuracy']:.2f}"
                    if d.get("tokens_per_second"):
                        stats += f" | {d['tokens_per_second']:,.0f} tok/s"
                    if "valid_loss" in d:
                        stats += f" | valid {d['valid_loss']:.3f}"
                    if "valid_exact_match" in d:
                        stats += f" em {d['valid_exact_match']:.2f}"
                    bar.update(task, completed=d["step"], stats=stats)
                elif e["type"] == "message":
                    bar.console.print(f"[dim]{e['message']}[/]")
            if job["status"] in ("succeeded", "failed", "cancelled", "paused"):
                break
            time.sleep(0.5)
    color = "green" if job["status"] == "succeeded" else "red"
    console.print(f"[{color}]{job['status']}[/] {job['fine_tuned_model'] or ''}")
    if job["error"]:
        console.print(f"[red]{job['error']['message']}[/]")
    return job


@jobs_app.command("list")
@friendly_errors
def list_(limit: int = 20):
    # ids and model names wrap whole at 80 columns, never cut with "…" (a user copies them)
    table = Table(Column("id", overflow="fold"), "model", "method", "status",
                  Column("fine-tuned model", overflow="fold"))
    for j in service.list_jobs(limit=limit)["data"]:
        table.add_row(j["id"], j["model"], j["hyperparameters"]["training_method"], j["status"],
                      j["fine_tuned_model"] or "")
    console.print(table)


@jobs_app.command("show")
@friendly_errors
def show(job_id: str):
    """Show a job (by id or a unique id prefix)."""
    print_json(service.get_job(service.resolve_job_id(job_id)))


@jobs_app.command("events")
@friendly_errors
def events(job_id: str, limit: int = 100):
    """A job's events, oldest first, with ISO times (by id or a unique id prefix)."""
    for e in reversed(service.list_events(service.resolve_job_id(job_id), limit=limit)["data"]):
        console.print(f"{iso_time(e['created_at'])} {e['level']:5} {e['message']}", markup=False)


@jobs_app.command("watch")
@friendly_errors
def watch(job_id: str, run_here: bool = typer.Option(False, help="also schedule jobs from this process")):
    watch_job(service.resolve_job_id(job_id), run_here=run_here)


def _action(name: str):
    @friendly_errors
    def command(job_id: str):
        job_id = service.resolve_job_id(job_id)
        job = service.request_action(job_id, name)
        console.print(f"{job_id}: {job['status']}")  # cancelling / pausing while a running job stops
    command.__doc__ = f"{name.capitalize()} a job (by id or a unique id prefix)."
    return command


for _name in ("cancel", "pause", "resume"):
    jobs_app.command(_name)(_action(_name))


def worker(concurrency: Optional[int] = typer.Option(None, help="jobs at once (default GRAFT_JOB_CONCURRENCY)")):
    """Run the job scheduler standalone (without the HTTP server)."""
    from graftlm.jobs.scheduler import Scheduler

    console.print("graft worker: scheduling fine-tuning jobs (Ctrl-C to stop)")
    Scheduler(concurrency=concurrency).run()
