"""graftlm: customize open LLMs and serve many adapters from one batch."""

__version__ = "0.1.0"
