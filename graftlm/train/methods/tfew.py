"""T-Few: (IA)³ vectors that rescale attention keys, values and the feed-forward inner activation."""

from __future__ import annotations

from graftlm.train.methods import save_adapter as save  # noqa: F401

TARGET_MODULES = ["k_proj", "v_proj", "down_proj"]
FEEDFORWARD_MODULES = ["down_proj"]  # (IA)³ scales down_proj's input, i.e. the FFN activation


def load_kwargs(cfg) -> dict:
    return {}


def prepare(model, cfg):
    from peft import IA3Config, get_peft_model
    config = IA3Config(task_type="CAUSAL_LM", target_modules=TARGET_MODULES,
                       feedforward_modules=FEEDFORWARD_MODULES)
    return get_peft_model(model, config)
