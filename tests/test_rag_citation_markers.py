"""Issue 16 item 8: an answer's [n] markers and its `citations` list agree: each citation says whether the
text cites it, and markers that name no passage are reported."""

from __future__ import annotations

from graftlm.rag.generate import cite_markers, mark_cited


def _cites(n):
    return [{"index": i, "document_id": f"d{i}"} for i in range(1, n + 1)]


def test_markers_are_parsed_in_order_of_first_use():
    assert cite_markers("Paris [2]. The tower [1, 3] and again [2]; [1,2]") == [2, 1, 3]
    assert cite_markers("no markers, [a] [] nor [1.5") == []


def test_citations_say_which_passages_the_text_cites():
    info = {}
    cites = mark_cited(_cites(3), "It is in Paris [2], see also [7].", info)
    assert [c["cited"] for c in cites] == [False, True, False]
    assert info == {"cited": [2], "unknown_citations": [7]}


def test_a_rag_answer_over_the_api_marks_its_citations(client, tiny_model):
    from graftlm import rag

    kb = rag.create_kb("facts", chunk_size=32, chunk_overlap=4)
    rag.ingest_documents(kb, [{"id": "paris", "text": "Paris is the capital of France.", "metadata": {}}])
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Capital of France?"}],
                                       max_tokens=6, temperature=0,
                                       extra_body={"knowledge_base_id": kb.id, "passages": 1}).model_dump()
    text = r["choices"][0]["message"]["content"]
    assert [c["cited"] for c in r["citations"]] == [c["index"] in cite_markers(text) for c in r["citations"]]
    assert r["rag"]["cited"] == [n for n in cite_markers(text) if n == 1]
    rag.close_stores()
