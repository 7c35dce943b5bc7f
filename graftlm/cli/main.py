"""`graft`: the command line, assembled from its sub-apps. Commands that need no server work directly on GRAFT_HOME."""

from __future__ import annotations

import typer

from graftlm.cli import clusters, data, finetune, keys, models, serve
from graftlm.cli.common import wrap_commands
from graftlm.cli import kb as rag_cli
from graftlm.cli import evals as evals_cli

app = typer.Typer(help="graftlm: fine-tune open LLMs and serve many adapters from one batch.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
app.add_typer(models.app, name="models", help="Pull, import, list and export models.")
app.add_typer(data.app, name="data", help="Validate datasets.")
app.add_typer(keys.app, name="keys", help="Manage API keys (each belongs to one project, with a role).")
app.add_typer(keys.projects_app, name="projects", help="Projects: isolated teams, their quotas and data policy.")
app.add_typer(finetune.app, name="finetune", help="Create fine-tuning jobs.")
app.add_typer(finetune.jobs_app, name="jobs", help="List, watch and control fine-tuning jobs.")
app.add_typer(clusters.clusters_app, name="clusters", help="Dedicated AI clusters.")
app.add_typer(clusters.endpoints_app, name="endpoints", help="Endpoints on hosting clusters.")
app.add_typer(evals_cli.app, name="eval", help="Evaluate models and compare runs.")
data.app.command("synth")(evals_cli.synth_command)
app.command("ladder")(evals_cli.ladder_command)
app.add_typer(rag_cli.app, name="kb", help="Knowledge bases: create, list, delete, ingest, search.")
app.add_typer(rag_cli.rag_app, name="rag", help="Evaluate retrieval and grounded answers.")
app.command("serve")(serve.serve)
app.command("chat")(models.chat)
app.command("worker")(finetune.worker)
app.command("usage")(clusters.usage)
app.command("audit")(keys.audit)
wrap_commands(app)  # a GraftError from any command is one line and exit code 2, never a traceback
