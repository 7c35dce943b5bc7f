"""`graft`: the command line (assembled in graftlm.cli.main).

``app`` is resolved lazily so that modules elsewhere (graftlm.cli.kb, graftlm.cli.evals) can import
graftlm.cli.common without importing every sub-app back.
"""


def __getattr__(name: str):
    if name == "app":
        from graftlm.cli.main import app

        return app
    raise AttributeError(f"module 'graftlm.cli' has no attribute {name!r}")
