"""Test and benchmark helpers: tiny random models (models.py) and PEFT adapters for them (adapters.py)."""

from graftlm.testing.models import CHATML_TEMPLATE, build_tiny_llama, build_tiny_tokenizer  # noqa: F401
