"""Test and benchmark helpers: tiny random models (models.py) and PEFT adapters for them (adapters.py)."""

from graftlm.testing.models import (CHATML_TEMPLATE, build_learnable_llama, build_tiny_llama,  # noqa: F401
                                    build_tiny_tokenizer)
