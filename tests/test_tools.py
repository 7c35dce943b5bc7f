"""Tools: tool_choice none/auto/required/named, tool_calls in OpenAI's shape (the openai SDK parses them,
streamed and not), role "tool" messages rendered back, and tool-call training data validated and learned."""

from __future__ import annotations

import json

import jsonschema_rs
import pytest

from graftlm.data.checks import check_record
from graftlm.data.formats import normalize
from graftlm.data.render import IGNORE_INDEX, encode_example, render_prompt
from graftlm.data.tools import parse_tool_calls, partial_open_tag, plain_messages

pytest.importorskip("xgrammar")

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "the weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"enum": ["paris", "london"]},
                                                    "days": {"type": "integer", "minimum": 1, "maximum": 7}},
                   "required": ["city", "days"], "additionalProperties": False}}}
BALANCE = {"type": "function", "function": {
    "name": "get_balance", "parameters": {"type": "object", "properties": {"account": {"enum": ["main", "savings"]}},
                                          "required": ["account"], "additionalProperties": False}}}
TOOLS = [WEATHER, BALANCE]
USER = [{"role": "user", "content": "what is the weather in paris"}]


@pytest.fixture(scope="session")
def long_model_dir(tmp_path_factory):
    """The varied tiny Llama with a 2,048-token context: its 384-token vocabulary spends ~1 token per
    character on the tools' JSON."""
    from graftlm.testing.adapters import build_test_llama

    return build_test_llama(tmp_path_factory.mktemp("long-llama"), max_positions=2048)


@pytest.fixture
def tiny_served(long_model_dir, monkeypatch):
    from graftlm.models.catalog import import_model

    monkeypatch.setenv("GRAFT_DTYPE", "float32")
    return import_model(long_model_dir, "tiny")


def ask(client, **kw):
    # 160 tokens: a whole call is ~85 of this vocabulary's tokens ({"arguments":{"city":"london","days":7},
    # "name":"get_weather"} in its tags); 80 cut some sampled calls one token short (finish_reason "length")
    return client.chat.completions.create(**({"model": "tiny", "messages": USER, "max_tokens": 160,
                                              "temperature": 1.0, "seed": 2, "tools": TOOLS} | kw))


def valid_call(call) -> bool:
    spec = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}[call.function.name]
    return call.type == "function" and call.id.startswith("call_") and \
        jsonschema_rs.validator_for(spec).is_valid(json.loads(call.function.arguments))


def test_required_and_named_tool_choice_give_valid_calls_the_sdk_parses(client, tiny_served):
    r = ask(client, tool_choice="required", n=3)
    for c in r.choices:
        assert c.finish_reason == "tool_calls" and len(c.message.tool_calls) == 1, c
        assert valid_call(c.message.tool_calls[0])
    named = ask(client, tool_choice={"type": "function", "function": {"name": "get_balance"}})
    (call,) = named.choices[0].message.tool_calls
    assert call.function.name == "get_balance" and valid_call(call)


def test_streamed_tool_calls_match_the_whole_answer(client, tiny_served):
    whole = ask(client, tool_choice="required").choices[0]
    calls, finals, content = {}, [], ""
    for chunk in ask(client, tool_choice="required", stream=True):
        for c in chunk.choices:
            content += c.delta.content or ""
            for d in c.delta.tool_calls or []:
                entry = calls.setdefault(d.index, {"name": "", "arguments": "", "id": d.id})
                entry["name"] += d.function.name or ""
                entry["arguments"] += d.function.arguments or ""
            if c.finish_reason:
                finals.append(c.finish_reason)
    assert finals == ["tool_calls"] and content == ""
    (streamed,) = calls.values()
    assert streamed["name"] == whole.message.tool_calls[0].function.name
    assert json.loads(streamed["arguments"]) == json.loads(whole.message.tool_calls[0].function.arguments)


def test_tools_are_rendered_unless_tool_choice_is_none(client, tiny_served):
    plain = client.chat.completions.create(model="tiny", messages=USER, max_tokens=2, temperature=0)
    auto = ask(client, max_tokens=2, temperature=0)
    none = ask(client, max_tokens=2, temperature=0, tool_choice="none")
    assert auto.usage.prompt_tokens > plain.usage.prompt_tokens == none.usage.prompt_tokens


def test_a_tool_result_round_trip(client, tiny_served):
    first = ask(client, tool_choice="required").choices[0].message
    messages = USER + [first.model_dump(exclude_none=True),
                       {"role": "tool", "tool_call_id": first.tool_calls[0].id, "content": '{"temp_c": 21}'}]
    r = client.chat.completions.create(model="tiny", messages=messages, tools=TOOLS, max_tokens=4, temperature=0)
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")
    with_result = r.usage.prompt_tokens
    without = client.chat.completions.create(model="tiny", messages=USER, tools=TOOLS, max_tokens=1,
                                             temperature=0).usage.prompt_tokens
    assert with_result > without  # the call and its result are in the prompt


def test_bad_tool_requests_are_400s_naming_the_field(http, tiny_served):
    def post(**kw):
        return http.post("/v1/chat/completions", json={"model": "tiny", "messages": USER, "max_tokens": 2} | kw)
    cases = [({"tool_choice": "required"}, "tool_choice"),
             ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
             ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools.0.function.name"),
             ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object",
               "properties": {"a": {"oneOf": [{"type": "string"}]}}}}}], "tool_choice": "required"},
              "tools.0.function.parameters.properties.a.oneOf"),
             ({"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}},
              "response_format")]
    for body, param in cases:
        r = post(**body)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (body, r.text)


def test_parse_and_stream_helpers():
    text = 'let me check<tool_call>{"name": "get_weather", "arguments": {"city": "paris", "days": 2}}</tool_call>'
    content, calls = parse_tool_calls(text, {"get_weather"})
    assert content == "let me check" and json.loads(calls[0]["function"]["arguments"]) == {"city": "paris", "days": 2}
    assert parse_tool_calls("<tool_call>{not json}</tool_call>", {"x"}) == ("<tool_call>{not json}</tool_call>", [])
    assert parse_tool_calls('<tool_call>{"name": "other", "arguments": {}}</tool_call>', {"x"})[1] == []
    assert partial_open_tag("hello <tool") == 5 and partial_open_tag("hello") == 0


def test_tool_call_training_data_is_validated_and_learned(tiny_model_dir):
    from transformers import AutoTokenizer

    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "paris", "days": 1}'}}
    line = {"tools": TOOLS, "messages": USER + [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "assistant", "content": "it is sunny in paris"}]}
    assert check_record(line, "chat") == []
    bad = [({**line, "messages": line["messages"][:1] + line["messages"][2:]}, "messages[1].role"),
           ({**line, "messages": USER + [{"role": "assistant", "tool_calls": [
               {"type": "function", "function": {"name": "get_weather", "arguments": "{oops"}}]}]},
            "messages[1].tool_calls[0].function.arguments"),
           ({**line, "messages": USER + [{"role": "assistant", "tool_calls": [
               {"type": "function", "function": {"name": "launch", "arguments": "{}"}}]}]},
            "messages[1].tool_calls[0].function.name"),
           ({**line, "tools": [{"type": "function"}]}, "tools[0]")]
    for record, field in bad:
        assert field in [f for f, _ in check_record(record, "chat")], (field, check_record(record, "chat"))
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    example = normalize(line, "chat")
    enc = encode_example(tok, example)
    learned = tok.decode([t for t, label in zip(enc["input_ids"], enc["labels"]) if label != IGNORE_INDEX])
    assert '<tool_call>{"name": "get_weather", "arguments": {"city": "paris", "days": 1}}</tool_call>' in learned
    assert "it is sunny in paris" in learned and "sunny\n</tool_response>" not in learned
    # the training prompt of the first turn is the serving prompt of the same request, token for token
    served = render_prompt(tok, plain_messages(USER, TOOLS))
    assert enc["input_ids"][:len(served)] == served
