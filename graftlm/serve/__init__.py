"""graftlm's serving engine: one base model, many LoRA and (IA)³ adapters, one continuous batch."""

from .engine import Engine, EngineUnavailable, default_dtype
from .sampler import SamplingParams, TokenLogprob
from .scheduler import QueueFull
from .request import Delta, Output, RequestHandle

__all__ = ["Engine", "EngineUnavailable", "SamplingParams", "TokenLogprob", "QueueFull", "Delta", "Output",
           "RequestHandle", "default_dtype"]
