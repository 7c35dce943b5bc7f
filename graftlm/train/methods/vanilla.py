"""Vanilla: full fine-tuning, or only the last N decoder layers.

With ``num_of_last_layers`` = N, the last N decoder layers and the final norm train; the
embeddings and the LM head stay frozen (they are usually tied, and the embedding matrix of a small
model is a large share of its weights, so training it would not be "the last N layers").
Without N every weight trains. The result is a complete model directory with its tokenizer.
"""

from __future__ import annotations

from graftlm.train.methods import no_defaults_to_fill as fill_defaults, no_load_kwargs as load_kwargs  # noqa: F401
from graftlm.train.methods import runs_anywhere as check_runtime  # noqa: F401

ADAPTER_TYPE = "full"
FIELDS = ("num_of_last_layers",)
OCI_DEFAULTS: dict = {}  # num_of_last_layers None: every layer trains
AUTO_DEFAULTS: dict = {}
OCI_LEARNING_RATE = 1e-5
AUTO_BASE_LEARNING_RATE = 5e-5  # a common full fine-tuning rate for small models, not yet measured here
EARLY_STOPPING_PATIENCE = 15
EARLY_STOPPING_THRESHOLD = 1e-4


def prepare(model, cfg):
    n = cfg.num_of_last_layers
    layers = model.model.layers
    if n is None or n >= len(layers):
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    for p in model.parameters():
        p.requires_grad_(False)
    for layer in layers[len(layers) - n:]:
        for p in layer.parameters():
            p.requires_grad_(True)
    for p in model.model.norm.parameters():
        p.requires_grad_(True)
    return model


def save(model, out_dir, tokenizer=None, state_dict=None) -> None:
    if state_dict is None:
        model.save_pretrained(str(out_dir), safe_serialization=True)
    else:  # gathered from sharded ranks
        model.save_pretrained(str(out_dir), safe_serialization=True, state_dict=state_dict)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out_dir))
