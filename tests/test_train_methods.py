"""Method facts live in each train/methods/<name>.py: every module declares the same interface, and the schema's
tables, the refusal of another method's field and the registry's adapter type are built from them."""

import pytest

from graftlm.errors import GraftError
from graftlm.train import config
from graftlm.train.config import parse_config
from graftlm.train.methods import METHODS, get_method

FACTS = ("ADAPTER_TYPE", "FIELDS", "OCI_DEFAULTS", "AUTO_DEFAULTS", "OCI_LEARNING_RATE", "AUTO_BASE_LEARNING_RATE",
         "EARLY_STOPPING_PATIENCE", "EARLY_STOPPING_THRESHOLD")
HOOKS = ("fill_defaults", "check_runtime", "load_kwargs", "prepare", "save")


@pytest.mark.parametrize("name", METHODS)
def test_every_method_declares_its_facts(name):
    m = get_method(name)
    missing = [a for a in FACTS if not hasattr(m, a)] + [h for h in HOOKS if not callable(getattr(m, h, None))]
    assert not missing
    assert m.ADAPTER_TYPE in ("lora", "ia3", "full")
    assert set(m.OCI_DEFAULTS) <= set(m.FIELDS) and set(m.AUTO_DEFAULTS) <= set(m.FIELDS)
    assert set(m.FIELDS) <= set(config.FineTuneConfig.model_fields)
    assert config.FineTuneConfig.model_fields["training_method"].annotation.__args__ == METHODS


@pytest.mark.parametrize("name", METHODS)
def test_schema_defaults_come_from_the_method(name):
    m = get_method(name)
    oci = parse_config({"training_method": name, "defaults": "oci"})
    assert oci.learning_rate == m.OCI_LEARNING_RATE
    assert oci.early_stopping_patience == m.EARLY_STOPPING_PATIENCE
    assert oci.early_stopping_threshold == m.EARLY_STOPPING_THRESHOLD
    for field, value in m.OCI_DEFAULTS.items():
        assert getattr(oci, field) == value
    auto = parse_config({"training_method": name})
    for field, value in m.AUTO_DEFAULTS.items():
        assert getattr(auto, field) == value
    for other in {f for n in METHODS for f in get_method(n).FIELDS} - set(m.FIELDS):
        assert getattr(auto, other) is None and getattr(oci, other) is None  # another method's field stays unset
        with pytest.raises(GraftError) as err:
            parse_config({"training_method": name, other: 1})
        assert err.value.param == other and err.value.status_code == 400


def test_the_registry_records_the_method_s_adapter_type():
    from graftlm.jobs.worker import adapter_type
    assert {m: adapter_type(m) for m in METHODS} == {"tfew": "ia3", "lora": "lora", "qlora": "lora",
                                                     "vanilla": "full"}
