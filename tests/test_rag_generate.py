"""Grounded chat: every rag_mode through /v1/chat/completions with the official SDK (base model, endpoint and
custom model), citations that point at real spans, streaming, the RAG-Token mixture by hand, RAG-Sequence
scoring, prompt trimming, and clear errors."""

from __future__ import annotations

import math

import openai
import pytest
import torch

from graftlm import rag
from graftlm.rag import generate, modes

DOCS = [{"id": "cats", "text": "Cats sleep a lot. A cat naps for sixteen hours a day.", "metadata": {}},
        {"id": "paris", "text": "Paris is the capital of France. The Eiffel Tower is in Paris.", "metadata": {}},
        {"id": "tea", "text": "Tea is brewed from leaves. Green tea is not oxidized.", "metadata": {}},
        {"id": "moon", "text": "The Moon orbits the Earth. It has no atmosphere to speak of.", "metadata": {}}]
DOC_TEXT = {d["id"]: d["text"] for d in DOCS}


@pytest.fixture
def served_kb(varied_model_dir, tmp_path, monkeypatch):
    """Base model `tiny`, a LoRA custom model of it behind an endpoint, and a small knowledge base."""
    from graftlm.clusters import clusters, endpoints
    from graftlm.models.catalog import import_model
    from graftlm.testing.adapters import make_peft_adapter
    from graftlm.store.db import session
    from graftlm.store.models import Model

    monkeypatch.setenv("GRAFT_DTYPE", "float32")
    tiny = import_model(varied_model_dir, "tiny")
    lora = make_peft_adapter(tiny["path"], tmp_path / "lora", kind="lora", r=4, seed=1)
    with session() as s:
        s.add(Model(id="ft:tiny:lora:1", kind="custom", parent="tiny", path=str(lora), adapter_type="lora",
                    context_length=512))
    cluster = clusters.create_cluster("HOSTING", base_model="tiny", name="h")
    endpoints.create_endpoint("ft:tiny:lora:1", cluster["id"], "lora-ep")
    kb = rag.create_kb("facts", chunk_size=32, chunk_overlap=4)
    rag.ingest_documents(kb, DOCS)
    yield kb
    from graftlm.clusters.hosting import shutdown_runtime

    shutdown_runtime()
    rag.close_stores()


def ask(client, kb, rag_mode="stuff", model="tiny", **kw):
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Where is the Eiffel Tower?"}], temperature=0,
        max_tokens=6, extra_body={"knowledge_base_id": kb.id, "rag_mode": rag_mode, "passages": 3, **kw})


def check_citations(citations, n=None):
    assert citations and [c["index"] for c in citations] == list(range(1, len(citations) + 1))
    for c in citations:
        assert c["text"] == DOC_TEXT[c["document_id"]][c["start"]:c["end"]] and c["chunk_id"].startswith(c["document_id"])
    if n is not None:
        assert len(citations) == n


@pytest.mark.parametrize("rag_mode", modes.RAG_MODES)
def test_each_rag_mode_through_the_sdk(client, served_kb, rag_mode):
    r = ask(client, served_kb, rag_mode)
    body = r.model_dump()
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason in ("stop", "length") and r.usage.completion_tokens >= 1
    check_citations(body["citations"], None if rag_mode == "iterative" else 3)
    assert body["citations"][0]["document_id"] == "paris"  # hybrid retrieval puts the Eiffel Tower first
    assert body["rag"]["rag_mode"] == rag_mode and body["rag"]["knowledge_base_id"] == served_kb.id
    if rag_mode == "sequence":
        cands = body["rag"]["candidates"]
        assert len(cands) == 3 and math.isclose(sum(math.exp(c["retrieval_logprob"]) for c in cands), 1, rel_tol=1e-6)
        for c in cands:
            assert c["answer_logprob"] <= 0 and math.isclose(c["score"], c["retrieval_logprob"] + c["answer_logprob"])
        assert r.choices[0].message.content == cands[body["rag"]["chosen"]]["text"]


def test_endpoint_and_custom_model_are_grounded_too(client, served_kb):
    outs = {m: ask(client, served_kb, model=m) for m in ("tiny", "lora-ep", "ft:tiny:lora:1")}
    assert outs["lora-ep"].choices[0].message.content == outs["ft:tiny:lora:1"].choices[0].message.content
    assert outs["lora-ep"].choices[0].message.content != outs["tiny"].choices[0].message.content
    assert all(o.model_dump()["citations"] for o in outs.values())


@pytest.mark.parametrize("rag_mode", ["stuff", "token"])
def test_streaming_carries_citations_first(client, served_kb, rag_mode):
    whole = ask(client, served_kb, rag_mode)
    chunks = list(client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Where is the Eiffel Tower?"}], temperature=0,
        max_tokens=6, stream=True, stream_options={"include_usage": True},
        extra_body={"knowledge_base_id": served_kb.id, "rag_mode": rag_mode, "passages": 3}))
    first = chunks[0].model_dump()
    assert first["choices"][0]["delta"]["role"] == "assistant"
    if rag_mode == "stuff":  # the list comes before the text: the final chunk says which passages it cited
        strip = lambda cs: [{k: v for k, v in c.items() if k != "cited"} for c in cs]  # noqa: E731
        assert strip(first["citations"]) == strip(whole.model_dump()["citations"])
        done = next(c.model_dump() for c in chunks if c.choices and c.choices[0].finish_reason)
        assert done["rag"]["cited"] == whole.model_dump()["rag"]["cited"]
    else:
        assert first["citations"] == whole.model_dump()["citations"]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= 1


def test_rag_token_mixture_equals_the_weighted_sum_by_hand(served_kb):
    from graftlm.clusters.hosting import get_runtime
    from graftlm.serve.sampler import SamplingParams

    target = get_runtime().resolve("tiny")
    messages = [{"role": "user", "content": "Where is the Eiffel Tower?"}]
    passages = generate.retrieve(generate.RagOptions(knowledge_base_id=served_kb.id, passages=3), messages[0]["content"])
    prompts = [generate.fit_prompt(target.engine.tokenizer, messages, [p], 400)[0] for p in passages]
    doc_lp = modes.retrieval_logprobs([p["score"] for p in passages])
    logits = target.engine.logits([(p, None) for p in prompts]).double()

    scores = [p["score"] for p in passages]
    lo, spread = min(scores), (max(scores) - min(scores)) or 1.0
    weights = torch.softmax(torch.tensor([(s - lo) / spread / modes.RETRIEVAL_TEMPERATURE for s in scores],
                                         dtype=torch.float64), 0)
    by_hand = sum(w * torch.softmax(row, -1) for w, row in zip(weights, logits))
    assert torch.allclose(modes.mixture_logprobs(logits, doc_lp).exp(), by_hand, atol=1e-9)
    assert math.isclose(float(by_hand.sum()), 1.0, rel_tol=1e-9)

    # the mode's first greedy token is the argmax of the hand-made mixture
    ans = modes.token(target, prompts, doc_lp, SamplingParams(max_tokens=1, temperature=0, ignore_eos=True))
    assert ans.text == target.engine.tokenizer.decode([int(by_hand.argmax())], skip_special_tokens=True)
    # a one-passage mixture is that passage's own greedy decoding
    alone = modes.token(target, prompts[:1], [0.0], SamplingParams(max_tokens=5, temperature=0))
    out = target.engine.generate([(prompts[0], SamplingParams(max_tokens=5, temperature=0), None)])[0]
    assert alone.text == out.text


def test_retrieval_weights_follow_the_ranking_whatever_the_score_scale():
    rrf_scores = [2 / 61, 1 / 62 + 1 / 65, 1 / 64 + 1 / 70, 1 / 80 + 1 / 90]  # hybrid: all near 2/60
    weights = [math.exp(lp) for lp in modes.retrieval_logprobs(rrf_scores)]
    assert math.isclose(sum(weights), 1.0, rel_tol=1e-9)
    assert weights == sorted(weights, reverse=True)
    assert weights[0] > 0.4 and weights[0] / weights[-1] > 5  # a raw softmax of RRF gives ~0.25 each
    bm25 = [c * 500 for c in rrf_scores]  # the same ranking on a large scale does not go one-hot
    assert [math.exp(lp) for lp in modes.retrieval_logprobs(bm25)] == pytest.approx(weights)
    assert [math.exp(lp) for lp in modes.retrieval_logprobs([0.3, 0.3, 0.3])] == pytest.approx([1 / 3] * 3)
    assert modes.retrieval_logprobs([0.7]) == [0.0]


def test_rag_sequence_marginalizes_identical_answers():
    class Out:
        def __init__(self, text, lps):
            from graftlm.serve.sampler import TokenLogprob

            self.text, self.finish_reason = text, "stop"
            self.logprobs = [TokenLogprob(0, lp, []) for lp in lps]
            self.prompt_tokens, self.completion_tokens = 10, len(lps)

    class Engine:
        def generate(self, requests):
            assert all(params.logprobs == 0 for _, params, _ in requests)
            return [Out("A", [-1.0]), Out("B", [-0.5]), Out("A", [-1.0])]

    class Target:
        engine, adapter = Engine(), None

    from graftlm.serve.sampler import SamplingParams

    lp = [math.log(0.3), math.log(0.4), math.log(0.3)]
    ans = modes.sequence(Target(), [[1], [2], [3]], lp, SamplingParams(max_tokens=4))
    # B: 0.4 * e^-0.5 = 0.243 beats A pooled over two passages: 0.6 * e^-1 = 0.221
    assert ans.text == "B" and math.isclose(ans.details["marginal_logprob"], math.log(0.4) - 0.5)
    lp = [math.log(0.35), math.log(0.3), math.log(0.35)]
    ans = modes.sequence(Target(), [[1], [2], [3]], lp, SamplingParams(max_tokens=4))
    # A pooled: 0.7 * e^-1 = 0.258 beats B: 0.3 * e^-0.5 = 0.182, though each single A scores 0.129
    assert ans.text == "A" and math.isclose(ans.details["marginal_logprob"], math.log(0.7) - 1.0)
    best_single = max(ans.details["candidates"], key=lambda c: c["score"])
    assert best_single["text"] == "B"  # the pooled marginal, not the best single score, picks the answer


def test_long_passages_are_trimmed_to_fit_with_true_spans(served_kb):
    from graftlm.clusters.hosting import get_runtime

    tok = get_runtime().resolve("tiny").engine.tokenizer
    long_text = " ".join(f"Sentence number {i} talks about tea leaves." for i in range(60))
    passages = [{"index": i + 1, "document_id": f"d{i}", "chunk_id": f"d{i}#0", "text": long_text, "start": 0,
                 "end": len(long_text), "score": 1.0} for i in range(3)]
    messages = [{"role": "user", "content": "tea?"}]
    ids, kept = generate.fit_prompt(tok, messages, passages, 300)
    assert len(ids) <= 300 and len(kept) == 1 and kept[0]["truncated"]
    assert kept[0]["text"] == long_text[kept[0]["start"]:kept[0]["end"]] and kept[0]["end"] < len(long_text)
    with pytest.raises(Exception, match="messages alone"):
        generate.fit_prompt(tok, [{"role": "user", "content": "x " * 400}], passages, 100)


def test_bad_rag_requests_are_4xx(client, served_kb):
    empty = rag.create_kb("empty")
    cases = [({"knowledge_base_id": "nope"}, openai.NotFoundError, "nope"),
             ({"knowledge_base_id": empty.id}, openai.BadRequestError, "empty"),
             ({"knowledge_base_id": served_kb.id, "rag_mode": "magic"}, openai.BadRequestError, "rag_mode"),
             ({"knowledge_base_id": served_kb.id, "search_mode": "fuzzy"}, openai.BadRequestError, "search_mode"),
             ({"knowledge_base_id": served_kb.id, "passages": 0}, openai.BadRequestError, "passages"),
             ({"knowledge_base_id": served_kb.id, "passages": 500}, openai.BadRequestError, "passages"),
             ({"knowledge_base_id": served_kb.id, "rag_mod": "token"}, openai.BadRequestError, "rag_mod"),
             ({"knowledge_base_id": served_kb.id, "filters": "topic"}, openai.BadRequestError, "filters"),
             ({"knowledge_base_id": 5}, openai.BadRequestError, "knowledge_base_id")]
    for extra, error, says in cases:
        with pytest.raises(error, match=says):
            client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                           max_tokens=4, extra_body=extra)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}],
                                       extra_body={"knowledge_base_id": served_kb.id})


def test_top_k_is_sampling_on_the_rag_path_too(client, served_kb):
    greedy = ask(client, served_kb, temperature=0).choices[0].message.content
    for seed in range(3):  # top_k 1 keeps only the best token: greedy whatever the temperature
        sampled = ask(client, served_kb, temperature=1.5, top_k=1, seed=seed)
        assert sampled.choices[0].message.content == greedy
        assert len(sampled.model_dump()["citations"]) == 3 and sampled.model_dump()["rag"]["passages"] == 3


def test_embedded_answer_and_llm_ranker(served_kb):
    out = generate.answer("tiny", [{"role": "user", "content": "Tell me about tea"}], knowledge_base_id="facts",
                          rag_mode="iterative", max_tokens=12, passages=2)
    assert out["rag"]["rounds"] >= 1 and out["usage"]["completion_tokens"] <= 12
    check_citations(out["citations"])
    hits = rag.search(served_kb, "tea leaves", top_k=2, rerank=True, ranker="llm:tiny")
    assert len(hits) == 2 and all(h["ranker"] == "llm:tiny" and 0 <= h["score"] <= 1 for h in hits)
    assert hits[0]["score"] >= hits[1]["score"]
