"""Hyperparameters: OCI defaults, method-specific resolution, aliases, errors that name the field."""

import pytest

from graftlm.errors import GraftError
from graftlm.train.config import FineTuneConfig, check_runtime, parse_config


def test_oci_defaults_by_name():
    oci = lambda **hp: parse_config({"defaults": "oci", **hp})  # noqa: E731
    assert oci(training_method="tfew").learning_rate == 0.01
    assert oci(training_method="tfew").early_stopping_patience == 6
    assert oci(training_method="tfew").early_stopping_threshold == 0.01
    lora = oci(training_method="lora")
    assert (lora.learning_rate, lora.early_stopping_patience, lora.early_stopping_threshold) == (2e-4, 15, 1e-4)
    assert oci(training_method="vanilla").learning_rate == 1e-5
    d = oci()
    assert (d.total_training_epochs, d.training_batch_size, d.log_model_metrics_interval_in_steps) == (3, 8, 10)
    assert (d.lora_r, d.lora_alpha, d.lora_dropout, d.warmup_ratio) == (8, 8, 0.1, 0.03)
    assert "down_proj" in d.lora_target_modules and d.num_of_last_layers is None and d.resolved


def test_auto_is_the_default_and_leaves_data_dependent_values_to_training_time():
    d = parse_config({})
    assert d.defaults == "auto" and not d.resolved
    assert (d.total_training_epochs, d.training_batch_size, d.learning_rate) == (None, None, None)
    assert (d.lora_r, d.lora_alpha, d.lora_dropout, d.warmup_ratio) == (16, 32, 0.05, 0.1)
    assert parse_config({"lora_r": 4}).lora_alpha == 8  # alpha follows r
    assert parse_config({"lora_r": 4, "lora_alpha": 4}).lora_alpha == 4  # explicit values win
    given = parse_config({"n_epochs": 2, "batch_size": 4, "learning_rate": 1e-3})
    assert given.resolved and (given.total_training_epochs, given.training_batch_size) == (2, 4)


def test_aliases_map():
    c = parse_config({"method": "tfew", "n_epochs": 5, "batch_size": 4, "learning_rate_multiplier": 2,
                      "max_seq_length": 256, "defaults": "oci"})
    assert (c.training_method, c.total_training_epochs, c.training_batch_size, c.context_length) == ("tfew", 5, 4, 256)
    assert c.learning_rate == pytest.approx(0.02)
    auto = parse_config({"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto"})
    assert (auto.total_training_epochs, auto.training_batch_size, auto.learning_rate) == (None, None, None)
    assert parse_config({"training_duration": "2ep"}).total_training_epochs == 2
    c = parse_config({"training_duration": "100ba"})
    assert c.max_steps == 100


@pytest.mark.parametrize("hp,field,method", [
    ({"training_method": "tfew", "lora_r": 16}, "lora_r", "lora"),
    ({"training_method": "vanilla", "lora_target_modules": ["q_proj"]}, "lora_target_modules", "lora"),
    ({"training_method": "lora", "num_of_last_layers": 2}, "num_of_last_layers", "vanilla"),
    ({"method": "tfew", "lora_dropout": 0.1}, "lora_dropout", "lora"),
])
def test_a_field_of_another_method_is_refused(hp, field, method):
    with pytest.raises(GraftError) as err:
        parse_config(hp)
    assert err.value.param == field and "did you mean" in err.value.message and f'"{method}"' in err.value.message


def test_unknown_field_suggests_the_close_name():
    with pytest.raises(GraftError) as err:
        parse_config({"learning_rte": 1e-3})
    assert err.value.param == "learning_rte" and "did you mean learning_rate?" in err.value.message


@pytest.mark.parametrize("bad,field", [
    ({"learning_rate": 0}, "learning_rate"), ({"learning_rate": 1.5}, "learning_rate"),
    ({"total_training_epochs": 0}, "total_training_epochs"), ({"training_batch_size": 0}, "training_batch_size"),
    ({"early_stopping_patience": -1}, "early_stopping_patience"), ({"lora_dropout": 1.0}, "lora_dropout"),
    ({"training_method": "dpo"}, "training_method"), ({"training_duration": "3 weeks"}, "training_duration"),
    ({"n_epochs": 0}, "n_epochs"), ({"learning_rate_multiplier": 1e6}, "learning_rate_multiplier"),
    ({"lr_scheduler": "step"}, "lr_scheduler"), ({"not_a_knob": 1}, "not_a_knob"),
    ({"task_type": "RLHF"}, "task_type"), ({"num_of_last_layers": 0}, "num_of_last_layers"),
    ({"lora_target_modules": ["q_proj", "qkv"]}, "lora_target_modules"),
    ({"lora_target_modules": []}, "lora_target_modules"),
])
def test_invalid_values_name_the_field(bad, field):
    with pytest.raises(GraftError) as err:
        parse_config(bad)
    assert err.value.param == field


def test_qlora_without_cuda_is_refused():
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(GraftError) as err:
        check_runtime(parse_config({"training_method": "qlora"}))
    assert err.value.param == "training_method" and "CUDA" in err.value.message


def test_json_schema_published():
    props = FineTuneConfig.model_json_schema()["properties"]
    assert {"training_method", "learning_rate", "training_batch_size", "n_epochs", "training_duration"} <= set(props)


def test_lora_target_modules_are_llama_linears_or_all_linear():
    assert parse_config({"lora_target_modules": ["q_proj", "v_proj"]}).lora_target_modules == ["q_proj", "v_proj"]
    every = parse_config({}).lora_target_modules
    assert parse_config({"lora_target_modules": "all-linear"}).lora_target_modules == every
    assert parse_config({"lora_target_modules": ["all-linear"]}).lora_target_modules == every
    with pytest.raises(GraftError) as err:
        parse_config({"lora_target_modules": ["q_proj", "self_attn"]})
    assert err.value.code == "invalid_hyperparameter" and "'self_attn'" in err.value.message
    assert "gate_proj" in err.value.message  # the message lists the accepted names
