"""RunOptions is the one schema for an eval run's options (API body, fm.evals.run, run_defined_eval)."""

from __future__ import annotations

import pytest

from graftlm.errors import GraftError
from graftlm.evals.service import RunOptions


@pytest.mark.parametrize("options, param", [({"stratgy": "rag"}, "stratgy"), ({"strategy": "magic"}, "strategy"),
                                            ({"k": -1}, "k"), ({"max_tokens": 0}, "max_tokens")])
def test_bad_options_name_the_field(options, param):
    with pytest.raises(GraftError) as e:
        RunOptions.parse(options)
    assert e.value.param == param and param in e.value.message


def test_api_and_sdk_share_it(tmp_path):
    from graftlm import fm
    from graftlm.api.routes.evals import RunCreate

    assert set(RunCreate.model_fields) == set(RunOptions.model_fields) | {"model"}
    assert RunOptions.parse({}).model_dump() == {"strategy": "zero-shot", "k": 4, "train_path": None, "kb_id": None,
                                                 "max_examples": None, "max_tokens": 32, "failures": False}
    with pytest.raises(GraftError) as e:  # refused before anything runs (no such eval either)
        fm.evals.run("eval-none", "tiny", shots=3)
    assert e.value.param == "shots"
