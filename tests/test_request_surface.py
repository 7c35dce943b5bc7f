"""Every OpenAI chat-completion request field either works or is a 400 naming it (never silently ignored),
and the fields graftlm serves change the output the way OpenAI defines them: n, penalties, logit_bias, stop."""

from __future__ import annotations

import openai
import pytest
import torch

from graftlm.serve.sampler import SamplingParams, adjust_logits

MESSAGES = [{"role": "user", "content": "hello how are you"}]

# every field of OpenAI's chat-completion request: a value a client may send, and what graftlm does with it
# ("ok": served; "400": refused naming the field). Fields with a narrower accepted set appear twice.
FIELDS = [
    ("audio", {"voice": "alloy", "format": "wav"}, "400"),
    ("frequency_penalty", 0.5, "ok"), ("frequency_penalty", 3, "400"),
    ("function_call", "auto", "400"),
    ("functions", [{"name": "f", "parameters": {"type": "object"}}], "400"),
    ("logit_bias", {"5": 10}, "ok"), ("logit_bias", {"abc": 1}, "400"), ("logit_bias", {"99999": 1}, "400"),
    ("logit_bias", {"5": 101}, "400"),
    ("logprobs", True, "ok"),
    ("max_completion_tokens", 4, "ok"),
    ("max_tokens", 4, "ok"),
    ("metadata", {"k": "v"}, "400"),
    ("modalities", ["text"], "ok"), ("modalities", ["text", "audio"], "400"),
    ("n", 2, "ok"), ("n", 0, "400"), ("n", 17, "400"),
    ("parallel_tool_calls", True, "ok"),
    ("prediction", {"type": "content", "content": "x"}, "400"),
    ("presence_penalty", -0.5, "ok"), ("presence_penalty", -3, "400"),
    ("prompt_cache_key", "tenant-1", "ok"),
    ("reasoning_effort", "low", "400"),
    ("response_format", {"type": "text"}, "ok"), ("response_format", {"type": "xml"}, "400"),
    ("safety_identifier", "user-1", "ok"),
    ("seed", 7, "ok"),
    ("service_tier", "auto", "ok"), ("service_tier", "flex", "400"),
    ("stop", ["\n", "zz"], "ok"), ("stop", "", "400"),
    ("store", False, "ok"), ("store", True, "400"),
    ("stream", False, "ok"),
    ("stream_options", {"include_usage": True}, "ok"),
    ("temperature", 0.7, "ok"), ("temperature", 2.5, "400"),
    ("tool_choice", "auto", "400"),  # (without tools; tests/test_tools.py serves them together)
    ("tools", [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}], "ok"),
    ("top_logprobs", 2, "ok"), ("top_logprobs", 21, "400"),
    ("top_p", 0.9, "ok"), ("top_p", 0, "400"),
    ("user", "someone", "ok"),
    ("verbosity", "low", "400"),
    ("web_search_options", {}, "400"),
    # not OpenAI's
    ("top_k", 5, "ok"),
    ("repetition_penalty", 1.1, "400"), ("min_p", 0.1, "400"), ("temprature", 0.5, "400"),
]


@pytest.fixture
def tiny_served(varied_model_dir, monkeypatch):
    from graftlm.models.catalog import import_model

    monkeypatch.setenv("GRAFT_DTYPE", "float32")
    return import_model(varied_model_dir, "tiny")


def chat(http, **fields):
    return http.post("/v1/chat/completions", json={"model": "tiny", "messages": MESSAGES, "max_tokens": 4,
                                                   "temperature": 0, **fields})


def test_every_openai_chat_field_works_or_is_a_400_naming_it(http, tiny_served):
    for field, value, expect in FIELDS:
        r = chat(http, **{field: value})
        if expect == "ok":
            assert r.status_code == 200, (field, value, r.text)
            assert r.json()["choices"][0]["finish_reason"] in ("stop", "length")
        else:
            assert r.status_code == 400, (field, value, r.text)
            assert r.json()["error"]["param"].split(".")[0] == field, (field, r.json())
    r = chat(http, temprature=0.5)
    assert "did you mean 'temperature'" in r.json()["error"]["message"]


def test_the_completions_endpoint_refuses_what_it_does_not_serve(http, tiny_served):
    def post(**fields):
        return http.post("/v1/completions", json={"model": "tiny", "prompt": "the quick", "max_tokens": 3,
                                                  "temperature": 0, **fields})
    for field, value in (("suffix", "x"), ("best_of", 2), ("tools", []), ("nonsense", 1)):
        r = post(**{field: value})
        assert r.status_code == 400 and r.json()["error"]["param"] == field, (field, r.text)
    r = post(n=3, temperature=1, seed=1)
    assert r.status_code == 200 and [c["index"] for c in r.json()["choices"]] == [0, 1, 2]


def greedy_tokens(http, **fields) -> list[str]:
    r = chat(http, **({"logprobs": True, "max_tokens": 8} | fields))
    assert r.status_code == 200, r.text
    return [t["token"] for t in r.json()["choices"][0]["logprobs"]["content"]]


def test_logit_bias_forces_and_forbids_tokens(http, tiny_served, varied_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(varied_model_dir)
    plain = greedy_tokens(http)
    forced_id = tok.convert_tokens_to_ids("fox")
    assert greedy_tokens(http, logit_bias={str(forced_id): 100}) == [tok.decode([forced_id])] * 8
    alike = {str(i): -100 for i in range(len(tok)) if tok.decode([i]) == plain[0]}  # (decoding is lossy)
    assert greedy_tokens(http, logit_bias=alike)[0] != plain[0]


def test_penalties_change_greedy_output_as_openai_defines_them(http, tiny_served):
    plain = greedy_tokens(http, max_tokens=16)
    assert len(set(plain)) < len(plain)  # the tiny model repeats itself greedily (else nothing to penalize)
    penalized = greedy_tokens(http, max_tokens=16, frequency_penalty=2, presence_penalty=2)
    assert penalized != plain and len(set(penalized)) > len(set(plain))  # pushed to new tokens
    encouraged = greedy_tokens(http, max_tokens=16, presence_penalty=-2, frequency_penalty=-2)
    assert len(set(encouraged)) <= len(set(plain))


def test_adjust_logits_is_openais_formula():
    logits = torch.zeros(2, 6)
    params = [SamplingParams(presence_penalty=0.5, frequency_penalty=0.25, logit_bias={5: 3.0}), SamplingParams()]
    adjust_logits(logits, params, [[1, 1, 2], [1]])
    # token j: -= count_j * frequency_penalty + (count_j > 0) * presence_penalty; bias added
    assert logits[0].tolist() == [0, -(2 * 0.25 + 0.5), -(0.25 + 0.5), 0, 0, 3.0]
    assert logits[1].tolist() == [0] * 6  # a row without penalties is untouched, whatever its history


def test_n_choices_differ_are_reproducible_and_stream_with_their_index(client, tiny_served):
    kw = dict(model="tiny", messages=MESSAGES, max_tokens=6, temperature=1.0, seed=3, n=3)
    r = client.chat.completions.create(**kw)
    texts = [c.message.content for c in r.choices]
    assert [c.index for c in r.choices] == [0, 1, 2] and len(set(texts)) > 1
    assert [c.message.content for c in client.chat.completions.create(**kw).choices] == texts
    streamed = {0: "", 1: "", 2: ""}
    finals, completion = {}, 0
    for chunk in client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}):
        if chunk.usage:
            completion = chunk.usage.completion_tokens
        for c in chunk.choices:
            streamed[c.index] += c.delta.content or ""
            if c.finish_reason:
                finals[c.index] = c.finish_reason
    assert [streamed[i] for i in range(3)] == texts and sorted(finals) == [0, 1, 2]
    # the prompt is counted once, the completion tokens of every choice
    assert completion == r.usage.completion_tokens >= 3
    single = client.chat.completions.create(**(kw | {"n": 1}))
    assert r.usage.prompt_tokens == single.usage.prompt_tokens


def test_stop_strings_end_the_answer_before_them(client, tiny_served):
    whole = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=12,
                                           temperature=0).choices[0].message.content
    cut = whole[3:6]
    r = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=12, temperature=0,
                                       stop=["never-there", cut])
    assert r.choices[0].message.content == whole[:whole.index(cut)] and r.choices[0].finish_reason == "stop"


def test_rag_requests_refuse_fields_their_modes_do_not_serve(http, tiny_served):
    for field, value in (("n", 2), ("logit_bias", {"1": 1}), ("presence_penalty", 1.0), ("tools", []),
                         ("response_format", {"type": "json_object"})):
        r = chat(http, knowledge_base_id="kb-none", **{field: value})
        assert r.status_code == 400 and r.json()["error"]["param"] == field, (field, r.text)


def test_the_sdk_surfaces_the_param_of_a_refused_field(client, tiny_served):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=2,
                                       extra_body={"web_search_options": {}})
    assert e.value.body["param"] == "web_search_options"
