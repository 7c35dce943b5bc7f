"""Structured outputs: json_schema and json_object per row of a mixed batch (xgrammar token masks).

Random schemas (objects, enums, arrays, nested, numbers with bounds; 50, and 200 under -m slow) on a tiny
random model with base, LoRA and T-Few rows: every output parses and validates. Free rows beside grammar rows get the tokens they get alone."""

from __future__ import annotations

import json
import random

import jsonschema_rs
import openai
import pytest
import torch

from graftlm.data.render import render_prompt
from graftlm.errors import GraftError
from graftlm.serve import Engine, SamplingParams
from graftlm.testing.adapters import build_test_llama, make_peft_adapter

pytest.importorskip("xgrammar")


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    root = tmp_path_factory.mktemp("structured")
    model = build_test_llama(root / "model")
    e = Engine(model, dtype=torch.float32, device="cpu", max_seq_len=512, max_batch_size=64, max_adapters=4)
    e.register_adapter("lora", make_peft_adapter(model, root / "lora", kind="lora", r=4, seed=1))
    e.register_adapter("tfew", make_peft_adapter(model, root / "tfew", kind="ia3", seed=2))
    return e


def random_schema(rng: random.Random, depth: int = 0) -> dict:
    """A bounded schema: every string, number and array has a length or range, so a random model's output
    ends (an unbounded string would go on as long as the model likes)."""
    kinds = ["enum", "integer", "number", "boolean", "string", "array", "anyof"] + (["object"] if depth < 2 else [])
    kind = rng.choice(kinds)
    if kind == "enum":
        return {"enum": rng.sample(["red", "green", "blue", "yes", "no", "book_flight", "balance", 3, None], 3)}
    if kind == "integer":
        lo = rng.randint(-50, 50)
        return {"type": "integer", "minimum": lo, "maximum": lo + rng.randint(0, 500)}
    if kind == "number":
        lo = rng.randint(-10, 10)
        return {"type": "number", "minimum": lo, "maximum": lo + rng.randint(1, 20)}
    if kind == "boolean":
        return {"type": "boolean"}
    if kind == "string":
        return {"type": "string", "minLength": rng.randint(0, 2), "maxLength": rng.randint(3, 8)}
    if kind == "array":
        item = rng.choice([{"type": "integer", "minimum": 0, "maximum": 9}, {"enum": ["a", "b", "c"]},
                           {"type": "boolean"}])
        lo = rng.randint(0, 2)
        return {"type": "array", "items": item, "minItems": lo, "maxItems": lo + rng.randint(0, 3)}
    if kind == "anyof":
        return {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 5}, {"type": "null"},
                          {"enum": ["x", "y"]}]}
    return random_object(rng, depth + 1)


def random_object(rng: random.Random, depth: int = 0) -> dict:
    names = rng.sample(["label", "intent", "score", "items", "ok", "name", "age", "tags", "child", "meta"],
                       rng.randint(1, 4 if depth == 0 else 2))
    props = {n: random_schema(rng, depth) for n in names}
    required = [n for n in names if rng.random() < 0.7]
    return {"type": "object", "properties": props, "required": required, "additionalProperties": False}


def prompt(engine, i: int) -> list[int]:
    messages = [{"role": "user", "content": ["extract the fields", "book a flight", "hello", "balance"][i % 4]}]
    return render_prompt(engine.tokenizer, messages)


@pytest.mark.parametrize("count", [30, pytest.param(200, marks=pytest.mark.slow)])  # 200: ~40 s on 2 idle cores
def test_random_schemas_always_parse_and_validate(engine, count):
    rng = random.Random(0)
    schemas = [random_object(rng) for _ in range(count)]
    adapters = [None, "lora", "tfew"]
    requests = []
    for i, schema in enumerate(schemas):
        grammar = engine.grammars.json_schema(schema)
        temperature = 0 if i % 2 else 1.0
        requests.append((prompt(engine, i), SamplingParams(max_tokens=400, temperature=temperature, seed=i,
                                                           grammar=grammar), adapters[i % 3]))
    outs = engine.generate(requests)
    for schema, out in zip(schemas, outs):
        assert out.finish_reason == "stop", (schema, out.text)
        value = json.loads(out.text)
        assert jsonschema_rs.validator_for(schema).is_valid(value), (schema, out.text)
    assert len({o.text for o in outs}) > 0.75 * count  # not one canned answer


def test_free_rows_get_the_same_tokens_beside_grammar_rows(engine):
    free = [(prompt(engine, i), SamplingParams(max_tokens=12, temperature=t, seed=5, ignore_eos=True), a)
            for i, (t, a) in enumerate([(0, None), (1.0, "lora"), (0, "tfew"), (0.8, None)])]
    alone = [o.token_ids for o in engine.generate(free)]
    rng = random.Random(1)
    constrained = [(prompt(engine, i), SamplingParams(max_tokens=60, temperature=1.0, seed=i,
                                                      grammar=engine.grammars.json_schema(random_object(rng))), a)
                   for i, a in enumerate([None, "lora", "tfew", "lora"])]
    mixed = engine.generate([r for pair in zip(free, constrained) for r in pair])
    assert [o.token_ids for o in mixed[0::2]] == alone
    assert all(json.loads(o.text) is not None for o in mixed[1::2] if o.finish_reason == "stop")


def test_json_object_mode_gives_an_object(engine):
    outs = engine.generate([(prompt(engine, i), SamplingParams(max_tokens=40, temperature=0, seed=i,
                                                               grammar=engine.grammars.json_object()), None)
                            for i in range(4)])
    for out in outs:
        if out.finish_reason == "stop":  # (an unbounded object may run out of tokens: 'length', as OpenAI)
            assert isinstance(json.loads(out.text), dict)
        else:
            assert out.text.startswith("{")


def test_compiled_grammars_are_cached(engine):
    schema = {"type": "object", "properties": {"a": {"type": "boolean"}}, "required": ["a"]}
    first = engine.grammars.json_schema(schema)
    hits = engine.grammars.hits
    assert engine.grammars.json_schema(json.loads(json.dumps(schema))) is first
    assert engine.grammars.hits == hits + 1


@pytest.mark.parametrize("schema,where", [
    ({"type": "object", "properties": {"a": {"oneOf": [{"type": "string"}]}}}, ".properties.a.oneOf"),
    ({"type": "object", "patternProperties": {"^x": {}}}, ".patternProperties"),
    ({"type": "string", "format": "hostname"}, ".format"),
    ({"type": "array", "items": {"type": "integer", "multipleOf": 3}}, ".items.multipleOf"),
    ({"$ref": "https://example.com/s.json"}, ".$ref"),
    ({"type": "wat"}, ".type"),
])
def test_unsupported_schema_features_are_refused_naming_them(engine, schema, where):
    with pytest.raises(GraftError) as e:
        engine.grammars.json_schema(schema)
    assert e.value.param == "response_format.json_schema.schema" + where and e.value.status_code == 400


# --- over HTTP, through the openai SDK --------------------------------------------------------------

SCHEMA = {"type": "object", "properties": {"intent": {"enum": ["balance", "book_flight", "weather"]},
                                           "confidence": {"type": "number", "minimum": 0, "maximum": 1}},
          "required": ["intent", "confidence"], "additionalProperties": False}


@pytest.fixture
def tiny_served(varied_model_dir, monkeypatch):
    from graftlm.models.catalog import import_model

    monkeypatch.setenv("GRAFT_DTYPE", "float32")
    return import_model(varied_model_dir, "tiny")


def test_json_schema_over_the_api_streaming_and_not(client, tiny_served):
    fmt = {"type": "json_schema", "json_schema": {"name": "route", "schema": SCHEMA, "strict": True}}
    kw = dict(model="tiny", messages=[{"role": "user", "content": "what is my balance"}], max_tokens=100,
              temperature=1.0, seed=4, response_format=fmt)
    r = client.chat.completions.create(**kw, n=3)
    for c in r.choices:
        assert c.finish_reason == "stop"
        assert jsonschema_rs.validator_for(SCHEMA).is_valid(json.loads(c.message.content))
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(**kw, stream=True)
                       if c.choices)
    assert streamed == r.choices[0].message.content
    obj = client.chat.completions.create(model="tiny", messages=kw["messages"], max_tokens=100, temperature=0,
                                         response_format={"type": "json_object"})
    assert obj.choices[0].message.content.startswith("{")


def test_a_bad_response_format_is_a_400_naming_where(http, tiny_served):
    def post(fmt):
        return http.post("/v1/chat/completions", json={"model": "tiny", "messages": [{"role": "user", "content": "x"}],
                                                       "max_tokens": 4, "response_format": fmt})
    r = post({"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "object", "not": {}}}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "response_format.json_schema.schema.not"
    r = post({"type": "json_schema"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "response_format.json_schema"
    r = post({"type": "json_schema", "json_schema": {"name": "has space", "schema": {}}})
    assert r.status_code == 400 and r.json()["error"]["param"].startswith("response_format.json_schema.name")


def test_hostile_schemas_are_400s_not_500s(http, tiny_served):
    deep: dict = {"type": "integer"}
    for _ in range(300):
        deep = {"type": "array", "items": deep}
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"$ref": "#/$defs/missing"}}}]
    for body in ({"response_format": {"type": "json_schema", "json_schema": {"name": "d", "schema": deep}}},
                 {"response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": {
                     "$ref": "#/$defs/nowhere"}}}},
                 {"tools": tools, "tool_choice": "required"},
                 {"response_format": {"type": "json_schema", "json_schema": {"name": "m", "schema": {
                     "type": "object", "properties": {}, "required": ["a"], "minItems": 5}}}}):
        r = http.post("/v1/chat/completions", json={"model": "tiny", "messages": [{"role": "user", "content": "x"}],
                                                    "max_tokens": 4} | body)
        assert r.status_code in (200, 400), (body, r.text[:300])
        if r.status_code == 400:
            assert r.json()["error"]["param"].startswith(("response_format", "tools")), r.text
