"""`make demo`: the main job end to end on the embedded default, in a few minutes on a laptop CPU.

pull the base model → validate the sample dataset → ask the base model → fine-tune with T-Few →
host the base model and the custom model on one hosting cluster → ask both in one batch → accuracy
before/after on the held-out test set. Idempotent: a second run reuses the model, the trained
custom model (pass --retrain to train again) and the hosting cluster.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

HERE = Path(__file__).parent
TRAIN, TEST = HERE / "clinc150" / "train.jsonl", HERE / "clinc150" / "test.jsonl"
BASE = "smollm2-135m-instruct"
SUFFIX = "clinc-demo"
console = Console()


def step(title: str) -> None:
    console.rule(f"[bold cyan]{title}")


def sparkline(values: list[float]) -> str:
    bars = "▁▂▃▄▅▆▇█"
    lo, hi = min(values), max(values)
    return "".join(bars[int((v - lo) / (hi - lo + 1e-9) * (len(bars) - 1))] for v in values)


def load_test() -> list[tuple[list[dict], str]]:
    rows = [json.loads(line) for line in TEST.read_text().splitlines() if line.strip()]
    return [(r["messages"][:-1], r["messages"][-1]["content"]) for r in rows]


def accuracy(model_names: list[str]) -> dict[str, float]:
    from graftlm.inference.service import chat_batch

    tests = load_test()
    requests = [(m, messages) for m in model_names for messages, _ in tests]
    outs = chat_batch(requests, max_tokens=8)  # every model's rows in one batch on one base copy
    scores = {}
    for i, m in enumerate(model_names):
        answers = outs[i * len(tests):(i + 1) * len(tests)]
        hits = [a["text"].strip().lower().split("\n")[0].strip(" .") == gold for a, (_, gold) in zip(answers, tests)]
        scores[m] = sum(hits) / len(hits)
    return scores


def existing_custom_model() -> str | None:
    from graftlm.models.catalog import list_models

    mine = [m for m in list_models() if m["kind"] == "custom" and m["id"].startswith(f"ft:{BASE}:{SUFFIX}:")]
    return mine[-1]["id"] if mine else None


def fine_tune(epochs: int) -> str:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from graftlm import fm

    run = fm.create(model=BASE, train_data_path=str(TRAIN), register_to=SUFFIX, training_method="tfew",
                    training_duration=f"{epochs}ep", training_batch_size=8, context_length=256,
                    log_model_metrics_interval_in_steps=5)
    lr = run.hyperparameters["learning_rate"]
    lr = "auto (picked when training starts; the job's events say what and why)" if lr == "auto" else lr
    console.print(f"job {run.id}: T-Few (IA)³, {epochs} epochs, batch 8, lr {lr}")
    seen, losses = 0, []
    with Progress(TextColumn("fine-tuning"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[stats]}"),
                  TimeRemainingColumn(), console=console) as bar:
        task = bar.add_task("train", total=None, stats="")
        while True:
            events = fm.get_events(run)
            for e in events[seen:]:
                d = e["data"] or {}
                if "total_steps" in d:
                    bar.update(task, total=d["total_steps"])
                if e["type"] == "metrics":
                    losses.append(d["train_loss"])
                    extra = f" valid {d['valid_loss']:.3f}" if "valid_loss" in d else ""
                    bar.update(task, completed=d["step"], stats=f"loss {d['train_loss']:.3f}{extra}")
                elif "trainable parameters" in e["message"]:
                    bar.console.print(f"[dim]{e['message']}[/]")
            seen = len(events)
            run = fm.get(run)
            if run.status in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(1)
    if run.status != "succeeded":
        raise SystemExit(f"fine-tuning {run.status}: {run.error}")
    console.print(f"loss curve {sparkline(losses)}  {losses[0]:.3f} → {losses[-1]:.3f}")
    return run.fine_tuned_model


def host(custom: str) -> dict:
    from graftlm.clusters import clusters, endpoints

    cluster = next((c for c in clusters.list_clusters("HOSTING") if c["name"] == "demo-hosting"), None)
    cluster = cluster or clusters.create_cluster("HOSTING", base_model=BASE, name="demo-hosting")
    for name, model in (("demo-base", BASE), ("demo-custom", custom)):
        ep = endpoints.find_endpoint(name)
        if ep is None:
            endpoints.create_endpoint(model, cluster["id"], name)
        else:
            if ep["model"] != model:
                endpoints.update_endpoint(ep["id"], model=model)
            if ep["lifecycle_state"] != "ACTIVE":
                endpoints.activate_endpoint(ep["id"])
    return clusters.get_cluster(cluster["id"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--retrain", action="store_true", help="fine-tune again even if a demo model exists")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()

    from graftlm.cli.data import print_report
    from graftlm.data.validate import validate_file
    from graftlm.inference.service import chat_batch
    from graftlm.models import catalog

    step("1. pull the base model")
    model = catalog.pull(BASE, progress=lambda stage, frac: console.print(f"  {stage}") if frac < 1 else None)
    console.print(f"{model['id']}: {model['parameter_count']:,} parameters, context {model['context_length']}")

    step("2. validate the sample dataset (CLINC150 banking intents, CC BY 3.0)")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model["path"])
    print_report(str(TRAIN), validate_file(TRAIN, tokenizer=tokenizer, context_length=model["context_length"],
                                           epochs=args.epochs))

    question = [m for m in load_test()[0][0]]
    step("3. ask the base model")
    console.print(f"[bold]user:[/] {question[-1]['content']}")
    console.print(f"[bold]{BASE}:[/] {chat_batch([(BASE, question)], max_tokens=24)[0]['text']}")

    step("4. fine-tune with T-Few")
    custom = None if args.retrain else existing_custom_model()
    if custom:
        console.print(f"reusing {custom} (pass --retrain to train again)")
    else:
        custom = fine_tune(args.epochs)
    console.print(f"custom model: [green]{custom}[/]")

    step("5. host both on one hosting cluster, ask both in one batch")
    cluster = host(custom)
    console.print(f"cluster {cluster['id']}: {cluster['used_endpoint_capacity']}/{cluster['total_endpoint_capacity']} "
                  f"endpoints, one copy of {BASE}")
    answers = chat_batch([("demo-base", question), ("demo-custom", question)], max_tokens=24)
    for name, a in zip(("demo-base", "demo-custom"), answers):
        console.print(f"[bold]{name}:[/] {a['text']}")

    step("6. accuracy on the held-out test set (80 requests per model, one batch)")
    scores = accuracy(["demo-base", "demo-custom"])
    table = Table("endpoint", "model", "accuracy")
    table.add_row("demo-base", BASE, f"{scores['demo-base']:.1%}")
    table.add_row("demo-custom", custom, f"{scores['demo-custom']:.1%}")
    console.print(table)
    console.print("next: `graft serve` and point the openai SDK at http://127.0.0.1:8000/v1 "
                  "with the key in ~/.graft/admin.key")
    from graftlm.clusters.hosting import shutdown_runtime

    shutdown_runtime()


if __name__ == "__main__":
    main()
