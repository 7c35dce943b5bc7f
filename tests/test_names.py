"""Errors for unknown names say which kinds of names are accepted and suggest the closest one."""

from __future__ import annotations

import pytest

from graftlm.clusters import clusters, endpoints
from graftlm.clusters.hosting import HostingRuntime
from graftlm.errors import NotFound
from graftlm.models import catalog


def test_endpoint_typo_suggests_the_endpoint_and_never_says_pull(tiny_model):
    c = clusters.create_cluster("HOSTING", base_model="tiny")
    endpoints.create_endpoint("tiny", c["id"], "cs-base")
    with pytest.raises(NotFound) as e:
        HostingRuntime().resolve("cs-bsae")
    msg = e.value.message
    assert "did you mean 'cs-base'?" in msg.lower()
    assert "endpoint name" in msg and "custom model id" in msg and "base model" in msg
    assert "models pull" not in msg  # the base model is pulled already
    assert e.value.param == "model" and e.value.code == "model_not_found"


def test_base_model_typo_suggests_the_base_model(tiny_model):
    with pytest.raises(NotFound, match=r"Did you mean 'tiny'\?") as e:
        catalog.get_model("tinyy")
    assert "models pull" not in e.value.message


def test_pull_hint_only_when_no_base_model_is_registered():
    with pytest.raises(NotFound, match="graft models pull") as e:
        catalog.get_model("nope")
    assert "Did you mean" not in e.value.message


def test_far_names_get_no_suggestion(tiny_model):
    with pytest.raises(NotFound) as e:
        catalog.get_model("completely-different-thing")
    assert "Did you mean" not in e.value.message and "base models: tiny" in e.value.message


def test_hyperparameter_typos_suggest_the_name_meant():
    import pytest

    from graftlm.errors import GraftError
    from graftlm.train.config import parse_config

    for typo, meant in (("early_stoping_patience", "early_stopping_patience"), ("lora_rank", "lora_r")):
        with pytest.raises(GraftError) as e:
            parse_config({typo: 3})
        assert e.value.param == typo and f"did you mean {meant}?" in e.value.message
