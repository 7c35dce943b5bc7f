"""Hyperparameters: OCI defaults, method-specific resolution, aliases, errors that name the field."""

import pytest

from graftlm.errors import GraftError
from graftlm.train.config import FineTuneConfig, check_runtime, parse_config


def test_method_defaults_resolve():
    assert parse_config({"training_method": "tfew"}).learning_rate == 0.01
    assert parse_config({"training_method": "tfew"}).early_stopping_patience == 6
    assert parse_config({"training_method": "tfew"}).early_stopping_threshold == 0.01
    lora = parse_config({"training_method": "lora"})
    assert (lora.learning_rate, lora.early_stopping_patience, lora.early_stopping_threshold) == (2e-4, 15, 1e-4)
    assert parse_config({"training_method": "vanilla"}).learning_rate == 1e-5
    d = parse_config({})
    assert (d.total_training_epochs, d.training_batch_size, d.log_model_metrics_interval_in_steps) == (3, 8, 10)
    assert (d.lora_r, d.lora_alpha, d.lora_dropout) == (8, 8, 0.1)
    assert "down_proj" in d.lora_target_modules and d.num_of_last_layers is None


def test_aliases_map():
    c = parse_config({"method": "tfew", "n_epochs": 5, "batch_size": 4, "learning_rate_multiplier": 2,
                      "max_seq_length": 256})
    assert (c.training_method, c.total_training_epochs, c.training_batch_size, c.context_length) == ("tfew", 5, 4, 256)
    assert c.learning_rate == pytest.approx(0.02)
    auto = parse_config({"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto"})
    assert (auto.total_training_epochs, auto.training_batch_size, auto.learning_rate) == (3, 8, 2e-4)
    assert parse_config({"training_duration": "2ep"}).total_training_epochs == 2
    c = parse_config({"training_duration": "100ba"})
    assert c.max_steps == 100


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
