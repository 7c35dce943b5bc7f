"""`graft`: the command line, assembled from its sub-apps in graftlm.cli.main."""

from graftlm.cli.main import app  # noqa: F401 - the console script's entry point (graftlm.cli:app)
