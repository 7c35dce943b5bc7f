"""Shared fixtures: an isolated GRAFT_HOME per test, a tiny random Llama, a live server."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ADMIN_KEY = "gk-test-admin-key"


@pytest.fixture(autouse=True)
def graft_home(tmp_path, monkeypatch):
    """Every test gets its own GRAFT_HOME (and so its own SQLite DB and blob store)."""
    from graftlm.config import reset_settings
    from graftlm.store.db import dispose_all

    home = tmp_path / "graft-home"
    monkeypatch.setenv("GRAFT_HOME", str(home))
    monkeypatch.setenv("GRAFT_ADMIN_KEY", ADMIN_KEY)
    monkeypatch.delenv("GRAFT_DATABASE_URL", raising=False)
    # knowledge bases go to this test's GRAFT_HOME/rag.db, never to a PostgreSQL server named in the shell;
    # a test that wants one (the postgres-marked ones) sets it itself with monkeypatch
    monkeypatch.delenv("GRAFT_RAG_DATABASE_URL", raising=False)
    # hosting clusters run their engine in this process unless a test asks for replica processes
    # (tests/test_replicas.py): most tests reach into the engine (runtime.engines) to arm faults or read state
    monkeypatch.setenv("GRAFT_REPLICAS", "inproc")
    reset_settings()
    dispose_all()
    yield home
    import graftlm.fm
    from graftlm.clusters.hosting import shutdown_runtime

    graftlm.fm.shutdown()  # no scheduler thread may outlive its GRAFT_HOME
    shutdown_runtime()
    dispose_all()
    reset_settings()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from graftlm.testing.models import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture
def tiny_model(tiny_model_dir):
    """The tiny model registered as base model `tiny` in this test's GRAFT_HOME."""
    from graftlm.models.catalog import import_model

    return import_model(tiny_model_dir, "tiny")


@pytest.fixture
def live_server(graft_home):
    """A real uvicorn server on a free port; yields its base URL (…/v1)."""
    from graftlm.testing.live import serve_in_thread

    live = serve_in_thread()
    yield f"{live.origin}/v1"
    live.stop()


@pytest.fixture
def client(live_server):
    from openai import OpenAI

    return OpenAI(base_url=live_server, api_key=ADMIN_KEY, max_retries=0, timeout=60)


@pytest.fixture
def http(live_server):
    import httpx

    with httpx.Client(base_url=live_server.removesuffix("/v1"), timeout=60,
                      headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as c:
        yield c


@pytest.fixture
def lora_hosting_cluster(varied_model_dir, graft_home, tmp_path, monkeypatch):
    """Base model `tiny` (fp32), custom model `ft:tiny:lora:1` (a random LoRA r=4) and a HOSTING cluster `prod`
    of it, no endpoints yet; returns the cluster."""
    from graftlm.clusters import clusters
    from graftlm.models.catalog import import_model
    from graftlm.store.db import session
    from graftlm.store.models import Model
    from graftlm.testing.adapters import make_peft_adapter

    tiny = import_model(varied_model_dir, "tiny")
    monkeypatch.setenv("GRAFT_DTYPE", "float32")
    lora = make_peft_adapter(tiny["path"], tmp_path / "lora", kind="lora", r=4, seed=1)
    with session() as s:
        s.add(Model(id="ft:tiny:lora:1", kind="custom", parent="tiny", path=str(lora), adapter_type="lora",
                    context_length=512))
    return clusters.create_cluster("HOSTING", base_model="tiny", name="prod")


@pytest.fixture
def fp32(monkeypatch):
    """Training tests run in fp32: bf16 rounding makes a 64-wide random model's toy curve erratic (the bf16
    path has its own test). Modules opt in with pytestmark = pytest.mark.usefixtures("fp32")."""
    monkeypatch.setenv("GRAFT_DTYPE", "float32")


@pytest.fixture(scope="session")
def base(tmp_path_factory):
    """The tiny learnable Llama the training tests fine-tune (built once per session, read only)."""
    from graftlm.testing.models import build_learnable_llama

    return build_learnable_llama(tmp_path_factory.mktemp("learnable-llama"))


@pytest.fixture(scope="session")
def varied_model_dir(tmp_path_factory):
    """The tiny Llama with weights scaled so greedy outputs differ token to token (serving tests)."""
    from graftlm.testing.adapters import build_test_llama

    return build_test_llama(tmp_path_factory.mktemp("varied-llama"))
