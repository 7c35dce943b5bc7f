"""One device and dtype rule (graftlm.device) for training, serving and `graft chat`: an invalid value is an
error naming the variable everywhere."""

from __future__ import annotations

import pytest
import torch

from graftlm.config import reset_settings
from graftlm.errors import GraftError


@pytest.fixture
def env(monkeypatch):
    def set_(**values):
        for k, v in values.items():
            monkeypatch.setenv(k, v)
        reset_settings()
    yield set_
    reset_settings()


@pytest.mark.parametrize("value, served, trained", [("float32", torch.float32, torch.float32),
                                                     ("bf16", torch.bfloat16, torch.bfloat16),
                                                     ("float16", torch.float16, torch.float32)])
def test_dtype_choice_is_shared(env, value, served, trained):
    from graftlm.device import default_dtype, training_dtype
    from graftlm.serve import engine

    env(GRAFT_DTYPE=value)
    cpu = torch.device("cpu")
    assert default_dtype(cpu) == engine.default_dtype(cpu) == served
    assert training_dtype(cpu) == trained


def test_an_invalid_dtype_fails_training_serving_and_chat(env, tiny_model_dir, tmp_path):
    from graftlm.serve.engine import Engine
    from graftlm.train.loop import train

    env(GRAFT_DTYPE="float8")
    with pytest.raises(GraftError) as e:
        Engine(str(tiny_model_dir), device="cpu")
    assert e.value.param == "GRAFT_DTYPE"
    data = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}] * 4
    with pytest.raises(GraftError) as e:
        train({"training_method": "lora"}, tiny_model_dir, data, None, tmp_path / "out")
    assert e.value.param == "GRAFT_DTYPE"


@pytest.mark.parametrize("value", ["gpu", "tpu", "cuda:x"])
def test_an_invalid_device_is_an_error(env, value):
    from graftlm.device import device

    env(GRAFT_DEVICE=value)
    with pytest.raises(GraftError) as e:
        device()
    assert e.value.param == "GRAFT_DEVICE"
