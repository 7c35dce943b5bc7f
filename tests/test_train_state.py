"""TrainState is the resume format: a checkpoint's state.json holds exactly its fields, and a resumed run
starts from the TrainState it stored."""

import json
from dataclasses import asdict, fields

import pytest
import torch

from graftlm.testing.models import build_learnable_llama
from graftlm.train.loop import TrainState, train

torch.set_num_threads(1)

DATA = [{"messages": [{"role": "user", "content": q, "weight": 0}, {"role": "assistant", "content": a, "weight": 1}]}
        for q, a in [("hello", "fine"), ("book a flight", "paris")] * 4]


pytestmark = pytest.mark.usefixtures("fp32")


def test_checkpoint_state_is_the_train_state_and_resume_restores_it(tmp_path):
    base = build_learnable_llama(tmp_path / "base")
    hp = {"max_steps": 4, "batch_size": 4, "learning_rate": 1e-2, "eval_interval_steps": 1, "seed": 1}
    paused = train(hp, base, DATA, DATA[:2], tmp_path / "run", should_stop=lambda: "pause")
    assert (paused.status, paused.steps) == ("paused", 1)
    saved = json.loads((paused.checkpoint_dir / "state.json").read_text())
    assert set(saved) == {f.name for f in fields(TrainState)}
    state = TrainState.from_dict(saved)
    assert (state.step, state.best_step, state.last_saved_step, state.bad_evals) == (1, 1, 1, 0)
    assert state.trained_tokens == paused.trained_tokens and asdict(state) == saved

    events = []
    done = train(hp, base, DATA, DATA[:2], tmp_path / "run", on_event=events.append,
                 resume_from=paused.checkpoint_dir)
    resumed = next(e for e in events if e["type"] == "message" and e["message"].startswith("resumed"))
    assert resumed["data"]["step"] == 1
    assert [e["data"]["step"] for e in events if e["type"] == "metrics"] == [2, 3, 4]
    assert done.status == "succeeded" and done.trained_tokens > paused.trained_tokens
