"""`graft eval run|show|compare|list|calibrate|export-sft|export-preferences|forgetting`, plus
`ladder_command` and `synth_command` to mount as `graft ladder` and `graft data synth`."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import typer

from graftlm.cli.common import friendly_errors

app = typer.Typer(help="Evaluate models on JSONL eval sets.", no_args_is_help=True)


def _print_run(run: dict) -> None:
    typer.echo(f"{run['id']}  eval {run['eval_id']}  model {run['model']}  {run['strategy']}  n={run['n']}")
    for name, a in run["aggregates"].items():
        typer.echo(f"  {name:<22} {a['mean']:.3f}  95% CI [{a['ci_low']:.3f}, {a['ci_high']:.3f}]")
    typer.echo(f"  tokens/example {run['tokens']['prompt'] + run['tokens']['completion']:.0f}  "
               f"latency {run['latency_ms']:.1f} ms/example (batched)")


@app.command("run")
def run_command(
    model: str = typer.Option(..., "--model", "-m", help="Base or custom model id."),
    data: Path = typer.Option(..., "--data", "-d", exists=True, help="Eval JSONL (chat or prompt/completion)."),
    scorer: list[str] = typer.Option(["label_accuracy"], "--scorer", "-s", help="Scorer name, or judge:<model> for LLM-as-judge; repeat for several."),
    strategy: str = typer.Option("zero-shot", help="zero-shot | few-shot | rag"),
    k: int = typer.Option(4, help="Shots (few-shot) or passages (rag)."),
    train: Path | None = typer.Option(None, "--train", help="Training JSONL for few-shot / RAG examples."),
    kb: str | None = typer.Option(None, "--kb", help="Knowledge base id for RAG."),
    max_examples: int | None = typer.Option(None, help="Evaluate only the first N examples."),
    max_tokens: int = typer.Option(32),
    eval_id: str | None = typer.Option(None, "--eval-id", help="Add the run to an existing eval."),
    failures: bool = typer.Option(False, help="Cluster the failed examples and store the clusters with the run."),
) -> None:
    """Run MODEL over DATA and store the run (graft eval list shows it)."""
    from graftlm.evals.run import run_eval

    run = run_eval(model, str(data), scorers=scorer, strategy=strategy, k=k, train_path=str(train) if train else None,
                   kb_id=kb, max_examples=max_examples, max_tokens=max_tokens, eval_id=eval_id, failures=failures)
    _print_run(run)
    _print_failures(run)


def _print_failures(run: dict) -> None:
    """The failure clusters stored with the run (``graft eval run --failures``), if any."""
    for c in run.get("failure_clusters") or []:
        typer.echo(f"  failure cluster {c['cluster']}: {c['size']} examples, e.g. "
                   f"{c['samples'][0]['question']!r} -> {c['samples'][0]['prediction']!r}")


@app.command("show")
@friendly_errors
def show_command(run_id: str, examples: int = typer.Option(5, help="Per-example rows to print."),
                 as_json: bool = typer.Option(False, "--json")) -> None:
    """Show a stored eval run."""
    from graftlm.evals.store import get_run

    run = get_run(run_id)
    if as_json:
        typer.echo(json.dumps(run, indent=1))
        return
    _print_run(run)
    for r in run["results"][:examples]:
        _print_result(r)
    _print_failures(run)


def _wrapped(label: str, text, width: int = 100) -> str:
    """``label`` then ``text`` whole, wrapped under it (line breaks kept): rows that share a long prefix
    still show where they differ."""
    indent = " " * 14
    lines = [textwrap.fill(ln, width, initial_indent=indent, subsequent_indent=indent)
             or indent for ln in str(text).splitlines() or [""]]
    return f"    {label:<10}" + "\n".join(lines)[14:]


def _print_result(r: dict) -> None:
    typer.echo("  " + ", ".join(f"{name} {v:.2f}" for name, v in r["scores"].items()))
    typer.echo(_wrapped("prompt", r["question"]))
    typer.echo(_wrapped("answer", r["prediction"]))
    typer.echo(_wrapped("expected", r["reference"]))


@app.command("compare")
def compare_command(run_a: str, run_b: str, scorer: str | None = typer.Option(None)) -> None:
    """Paired bootstrap of RUN_B − RUN_A on their shared examples."""
    from graftlm.evals.run import compare_runs
    from graftlm.evals.store import get_run

    d = compare_runs(get_run(run_a), get_run(run_b), scorer)
    typer.echo(f"{d['scorer']}: {d['a_mean']:.3f} -> {d['b_mean']:.3f}  diff {d['diff']:+.3f} "
               f"95% CI [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]  n={d['n']}  "
               f"{'significant' if d['significant'] else 'not significant'}")


@app.command("list")
def list_command() -> None:
    """List evals and their runs."""
    from graftlm.evals.store import list_evals, list_runs

    for e in list_evals():
        runs = list_runs(e["id"])
        typer.echo(f"{e['id']}  {e['name']}  scorers {', '.join(e['scorers'])}  {len(runs)} run(s)")
        for r in runs:
            scores = "  ".join(f"{name} {a['mean']:.3f}" for name, a in r["aggregates"].items())
            typer.echo(f"  {r['id']}  {r['model']}  {r['strategy']}  {scores}")


@app.command("calibrate")
@friendly_errors
def calibrate_command(
    labels: Path = typer.Option(..., "--labels", exists=True, dir_okay=False,
                                help='Human labels JSONL: {"id": <example id>, "score": <1-5>} per line '
                                     '(id: the eval line\'s "id", else its line number).'),
    run_id: str = typer.Option(..., "--run", help="An eval run scored with judge:<model>."),
    scorer: str | None = typer.Option(None, "--scorer", help="Which judge:<model> scorer (default: the run's first)."),
    kappa_warning: float = typer.Option(0.4, help="Warn when Cohen's kappa is below this."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Agreement of a run's LLM judge with human labels (Cohen's kappa, accuracy) and the fitted
    judge → human calibration; warns when agreement is low."""
    from graftlm.evals.judge import calibrate_run, load_human_labels
    from graftlm.evals.store import get_run

    report = calibrate_run(get_run(run_id), load_human_labels(labels), scorer=scorer, kappa_warning=kappa_warning)
    if as_json:
        typer.echo(json.dumps(report, indent=1))
    else:
        _print_calibration(report)
    if report["warning"]:
        typer.echo(f"warning: {report['warning']}", err=True)


def _print_calibration(r: dict) -> None:
    typer.echo(f"{r['run']}  {r['scorer']}  n={r['n']} labelled examples"
               + (f" ({r['labels_not_in_run']} label(s) not in the run)" if r["labels_not_in_run"] else ""))
    typer.echo(f"  Cohen's kappa {r['kappa']:.3f}  accuracy {r['accuracy']:.3f}")
    typer.echo(f"  linear: human = {r['linear']['slope']:.3f} * judge + {r['linear']['intercept']:.3f}")
    typer.echo("  isotonic: " + ", ".join(f"{g}->{h:.2f}" for g, h in r["isotonic"].items()))


@app.command("export-sft")
@friendly_errors
def export_sft_command(
    run_ids: list[str] = typer.Argument(..., help="Eval runs scored with judge:<model> (several: best answer wins)."),
    out: Path = typer.Option(..., "--out", "-o", help="Chat JSONL to write."),
    scorer: str | None = typer.Option(None, "--scorer", help="Which judge:<model> scorer (default: the first)."),
    min_score: int = typer.Option(4, "--min-score", help="Keep answers the judge graded at least this (1-5)."),
) -> None:
    """Best judge-graded answer per example as SFT chat JSONL (checks with `graft data validate`)."""
    from graftlm.evals.export import export_sft
    from graftlm.evals.store import get_run

    _print_export(export_sft([get_run(r) for r in run_ids], out, scorer=scorer, min_score=min_score), "SFT")


@app.command("export-preferences")
@friendly_errors
def export_preferences_command(
    run_ids: list[str] = typer.Argument(..., help="Two or more eval runs over the same examples, judge-scored."),
    out: Path = typer.Option(..., "--out", "-o", help="Preference JSONL to write."),
    scorer: str | None = typer.Option(None, "--scorer", help="Which judge:<model> scorer (default: the first)."),
) -> None:
    """Chosen (best-graded) / rejected (worst-graded) answer pairs across runs as preference JSONL."""
    from graftlm.evals.export import export_preferences
    from graftlm.evals.store import get_run

    _print_export(export_preferences([get_run(r) for r in run_ids], out, scorer=scorer), "preference")


def _print_export(r: dict, kind: str) -> None:
    typer.echo(f"wrote {r['written']} {kind} example(s) to {r['path']} ({r['skipped']} of {r['examples']} "
               f"examples skipped; judge {r['scorer']})")
    if r["prompts_from_questions"]:
        typer.echo("note: an eval data file is gone, so some prompts are only the question (no system prompt)",
                   err=True)


@app.command("forgetting")
def forgetting_command(custom_model: str, base_model: str | None = typer.Option(None)) -> None:
    """General-knowledge score before (base) and after (custom model)."""
    from graftlm.evals.forgetting import forgetting_check

    r = forgetting_check(custom_model, base_model)
    typer.echo(f"{r['base_model']} {r['before']:.3f} -> {r['custom_model']} {r['after']:.3f}  change "
               f"{r['change']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]  {'FORGOT' if r['forgot'] else 'ok'}")


def ladder_command(
    train: Path = typer.Option(..., "--data", "--train", exists=True, help="Training JSONL."),
    eval_path: Path = typer.Option(..., "--eval", exists=True, help="Eval JSONL."),
    model: str = typer.Option(..., "--model", "-m", help="Base model id."),
    methods: str | None = typer.Option(None, help="Fine-tuning methods to train, comma-separated ('' for none; "
                                                  "default tfew,lora, or none with --reuse)."),
    reuse: str | None = typer.Option(None, "--reuse", help="Custom models already trained (ft:… ids, checkpoints "
                                                           "too), comma-separated: each is a rung, not retrained."),
    out: Path = typer.Option(Path("ladder-out"), "--out", help="Writes ladder.json and report.html here."),
    kb: str | None = typer.Option(None, "--kb", help="Knowledge base for the RAG rungs (default: training examples)."),
    few_shot_k: int = typer.Option(4), max_eval: int | None = typer.Option(None),
    scorer: str = typer.Option("label_accuracy"), training_duration: str = typer.Option("2ep"),
    learning_rate: float | None = typer.Option(None), price_per_unit_hour: float = typer.Option(1.0),
    constrained: bool | None = typer.Option(None, "--constrained/--no-constrained",
                                            help="Zero-shot and few-shot rungs whose answer is a JSON enum of the "
                                                 "labels (default: on for classification sets)."),
) -> None:
    """Zero-shot → few-shot → RAG → fine-tuned → fine-tuned + RAG on one eval set, with CIs and costs."""
    from graftlm.evals.ladder import run_ladder

    extra = {"learning_rate": learning_rate} if learning_rate else {}
    reused = tuple(m.strip() for m in (reuse or "").split(",") if m.strip())
    methods = methods if methods is not None else ("" if reused else "tfew,lora")
    run_ladder(str(train), str(eval_path), model, methods=tuple(m for m in methods.split(",") if m),
               custom_models=reused, out_dir=out,
               kb_id=kb, few_shot_k=few_shot_k, rag_k=few_shot_k, max_eval=max_eval, scorer=scorer,
               training_duration=training_duration, price_per_unit_hour=price_per_unit_hour, echo=typer.echo,
               constrained=constrained, **extra)


def synth_command(
    source: str | None = typer.Argument(None, help="A directory of .txt/.md files or a knowledge base id "
                                                   "(not needed with --from-queries)."),
    model: str = typer.Option(..., "--model", "-m", help="Model that writes questions and answers."),
    out: Path = typer.Option(Path("synth-out"), "--out"),
    from_queries: Path | None = typer.Option(None, "--from-queries", exists=True,
                                             help="Write variants of these real queries instead."),
    n: int | None = typer.Option(None, "--n", min=1, help="Generate at most N examples (before filtering)."),
    questions_per_chunk: int = typer.Option(1), eval_fraction: float = typer.Option(0.2),
    min_answer_overlap: float = typer.Option(0.5, help="Share of answer words that must appear in the chunk."),
    system_prompt: str | None = typer.Option(None),
) -> None:
    """Generate grounded question–answer chat JSONL (train + eval split), each line citing its chunk;
    or, with --from-queries, variants of real queries."""
    from graftlm.evals.synth import Filters, synthesize
    from graftlm.evals.synth import from_queries as variants

    if from_queries is None and source is None:
        raise typer.BadParameter("give SOURCE (a directory or knowledge base id) or --from-queries FILE",
                                 param_hint="SOURCE")
    if from_queries is not None:
        if source is not None:
            typer.echo(f"note: SOURCE {source!r} is ignored with --from-queries", err=True)
        r = variants(from_queries, out / "variants.jsonl", model=model, max_examples=n)
    else:
        r = synthesize(source, out, model=model, questions_per_chunk=questions_per_chunk, eval_fraction=eval_fraction,
                       system_prompt=system_prompt, filters=Filters(min_answer_overlap=min_answer_overlap),
                       max_examples=n)
    typer.echo(json.dumps(r, indent=1))
