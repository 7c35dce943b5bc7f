"""T-Few: (IA)³ vectors that rescale attention keys, values and the feed-forward inner activation."""

from __future__ import annotations

from graftlm.train.methods import no_defaults_to_fill as fill_defaults, no_load_kwargs as load_kwargs  # noqa: F401
from graftlm.train.methods import runs_anywhere as check_runtime, save_adapter as save  # noqa: F401

TARGET_MODULES = ["k_proj", "v_proj", "down_proj"]
FEEDFORWARD_MODULES = ["down_proj"]  # (IA)³ scales down_proj's input, i.e. the FFN activation

ADAPTER_TYPE = "ia3"
FIELDS = ()  # its targets are fixed; no hyperparameter of its own
OCI_DEFAULTS: dict = {}
AUTO_DEFAULTS: dict = {}
OCI_LEARNING_RATE = 1e-2
AUTO_BASE_LEARNING_RATE = 1e-2  # see graftlm.train.auto
EARLY_STOPPING_PATIENCE = 6
EARLY_STOPPING_THRESHOLD = 1e-2


def prepare(model, cfg):
    from peft import IA3Config, get_peft_model
    config = IA3Config(task_type="CAUSAL_LM", target_modules=TARGET_MODULES,
                       feedforward_modules=FEEDFORWARD_MODULES)
    return get_peft_model(model, config)
