"""Embedded inference through the serving engine (service: graftlm.inference.service)."""

from graftlm.inference.service import chat_batch  # noqa: F401
