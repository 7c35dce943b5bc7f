"""RAG over HTTP: knowledge-base CRUD, ingestion jobs (JSON and files), search, /v1/embeddings via the SDK,
and clear 4xx errors for bad input."""

from __future__ import annotations

import base64
import time

import numpy as np
import openai
import pytest

DOCS = [{"id": "cats", "text": "Cats are small carnivorous mammals. They sleep for most of the day.",
         "metadata": {"topic": "animals"}},
        {"id": "paris", "text": "Paris is the capital of France. The Eiffel Tower stands in Paris.",
         "metadata": {"topic": "places"}},
        {"id": "python", "text": "Python is a programming language created by Guido van Rossum.",
         "metadata": {"topic": "code"}}]


def wait_job(http, kb_id, job, timeout=60):
    deadline = time.time() + timeout
    while job["status"] == "running":
        assert time.time() < deadline, job
        time.sleep(0.1)
        job = http.get(f"/v1/knowledge_bases/{kb_id}/ingestions/{job['id']}").json()
    return job


def make_kb(http, name="kb", docs=DOCS):
    kb = http.post("/v1/knowledge_bases", json={"name": name, "chunk_size": 64, "chunk_overlap": 8}).json()
    if docs:
        job = http.post(f"/v1/knowledge_bases/{kb['id']}/documents", json={"documents": docs}).json()
        assert wait_job(http, kb["id"], job)["status"] == "succeeded"
    return kb


def test_kb_crud_ingestion_job_and_search(http):
    r = http.post("/v1/knowledge_bases", json={"name": "facts", "chunk_size": 64, "chunk_overlap": 8})
    assert r.status_code == 200, r.text
    kb = r.json()
    assert kb["object"] == "knowledge_base" and kb["documents"] == 0 and kb["embedding_model"] == "all-MiniLM-L6-v2"
    job = http.post(f"/v1/knowledge_bases/{kb['id']}/documents", json={"documents": DOCS}).json()
    assert job["object"] == "knowledge_base.ingestion" and job["status"] in ("running", "succeeded")
    job = wait_job(http, kb["id"], job)
    assert job["status"] == "succeeded" and job["progress"] == 1.0 and job["documents"] == 3 and job["chunks"] >= 3
    assert job["files"][0]["ok"] is True
    assert [k["id"] for k in http.get("/v1/knowledge_bases").json()["data"]] == [kb["id"]]
    assert http.get(f"/v1/knowledge_bases/{kb['id']}").json()["documents"] == 3

    for mode in ("keyword", "dense", "hybrid"):
        r = http.post(f"/v1/knowledge_bases/{kb['id']}/search", json={"query": "capital of France", "mode": mode,
                                                                       "top_k": 2})
        body = r.json()
        assert r.status_code == 200 and body["object"] == "list" and body["ranker"] is None
        assert body["data"][0]["document_id"] == "paris" and len(body["data"]) <= 2
        hit = body["data"][0]
        assert hit["text"] == DOCS[1]["text"][hit["start"]:hit["end"]]
    r = http.post(f"/v1/knowledge_bases/{kb['id']}/search", json={"query": "France", "rerank": True,
                                                                   "filters": {"topic": "places"}}).json()
    assert r["ranker"] == "cosine" and {h["document_id"] for h in r["data"]} == {"paris"}

    assert http.delete(f"/v1/knowledge_bases/{kb['id']}/documents/paris").json()["deleted"] is True
    assert http.delete(f"/v1/knowledge_bases/{kb['id']}/documents/paris").status_code == 404
    hits = http.post(f"/v1/knowledge_bases/{kb['id']}/search", json={"query": "capital of France"}).json()["data"]
    assert "paris" not in {h["document_id"] for h in hits}
    assert http.delete(f"/v1/knowledge_bases/{kb['id']}").json()["deleted"] is True
    r = http.get(f"/v1/knowledge_bases/{kb['id']}")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"


def test_multipart_files_become_documents(http, tmp_path):
    kb = make_kb(http, docs=None)
    files = [("files", ("notes.txt", b"Tea is brewed from leaves of Camellia sinensis.", "text/plain")),
             ("files", ("guide.md", b"# Coffee\n\nCoffee is brewed from roasted beans.", "text/markdown")),
             ("files", ("page.html", b"<html><head><title>Cocoa</title><script>x()</script></head>"
                                     b"<body><p>Cocoa comes from cacao seeds.</p></body></html>", "text/html")),
             ("files", ("rows.jsonl", b'{"id": "r1", "text": "Milk comes from cows."}\n'
                                      b'{"text": "Water boils at 100 degrees."}\n', "application/jsonl"))]
    job = http.post(f"/v1/knowledge_bases/{kb['id']}/documents", files=files).json()
    job = wait_job(http, kb["id"], job)
    assert job["status"] == "succeeded", job
    assert [(f["filename"], f["ok"], f["documents"]) for f in job["files"]] == [
        ("notes.txt", True, 1), ("guide.md", True, 1), ("page.html", True, 1), ("rows.jsonl", True, 2)]
    hits = http.post(f"/v1/knowledge_bases/{kb['id']}/search", json={"query": "cacao", "mode": "keyword"}).json()
    assert hits["data"][0]["document_id"] == "page.html" and "x()" not in hits["data"][0]["text"]
    assert http.get(f"/v1/knowledge_bases/{kb['id']}").json()["documents"] == 5


BAD_FILES = [
    ("slides.pptx", b"PK\x03\x04", "unsupported file type"),
    ("broken.pdf", b"%PDF-1.4 this is not really a pdf", "not a readable PDF"),
    ("bad.jsonl", b'{"text": "ok"}\nnot json\n', "line 2: invalid JSON"),
    ("empty.txt", b"   \n", "no text found"),
    ("latin1.txt", "café".encode("latin-1"), "not UTF-8"),
]


@pytest.mark.parametrize("name,content,says", BAD_FILES)
def test_a_bad_file_is_reported_and_the_good_ones_are_ingested(http, name, content, says):
    kb = make_kb(http)  # holds DOCS already: an upload with a bad file must not lose them
    r = http.post(f"/v1/knowledge_bases/{kb['id']}/documents?wait=true",
                  files=[("files", ("good.txt", b"Saffron comes from crocus flowers.", "text/plain")),
                         ("files", (name, content, "x/y"))])
    assert r.status_code == 200, r.text
    job = r.json()
    assert job["status"] == "partially_succeeded" and job["documents"] == 1, job
    good, bad = job["files"]
    assert (good["filename"], good["ok"], good["documents"]) == ("good.txt", True, 1) and good["chunks"] >= 1
    assert (bad["filename"], bad["ok"]) == (name, False) and says in bad["error"] and name in bad["error"]
    assert says in job["error"] and name in job["error"]
    assert http.get(f"/v1/knowledge_bases/{kb['id']}").json()["documents"] == len(DOCS) + 1
    hits = http.post(f"/v1/knowledge_bases/{kb['id']}/search", json={"query": "saffron crocus",
                                                                       "mode": "keyword"}).json()["data"]
    assert hits[0]["document_id"] == "good.txt"


def test_an_upload_of_only_bad_files_is_4xx_naming_each(http):
    kb = make_kb(http, docs=None)
    r = http.post(f"/v1/knowledge_bases/{kb['id']}/documents",
                  files=[("files", (name, content, "x/y")) for name, content, _ in BAD_FILES[:2]])
    assert r.status_code == 400, r.text
    message = r.json()["error"]["message"]
    assert all(name in message and says in message for name, _, says in BAD_FILES[:2])
    assert http.get(f"/v1/knowledge_bases/{kb['id']}").json()["documents"] == 0


def test_a_json_batch_reports_each_document_and_one_empty_document_does_not_refuse_the_rest(http):
    """Elasticsearch _bulk style: 200 documents, one with no text -> 199 ingested, the bad one reported by index."""
    from graftlm.rag import embeddings

    embeddings.embed(["warm up"])  # load the model here, not inside a request's 60 s timeout
    kb = make_kb(http, docs=None)
    docs = [{"id": f"d{i}", "text": f"Document {i} is about topic number {i}."} for i in range(200)]
    docs[57] = {"id": "d57", "text": "   "}
    docs[120] = {"id": "", "text": "an empty id"}
    docs.append({"id": "d3", "text": "Saffron comes from crocus flowers."})  # a repeated id: the last one wins
    r = http.post(f"/v1/knowledge_bases/{kb['id']}/documents", json={"documents": docs})
    assert r.status_code == 200, r.text
    job = wait_job(http, kb["id"], r.json(), timeout=600)  # 200 embeddings: slow on a loaded CPU
    assert job["status"] == "partially_succeeded" and job["documents"] == 198, {k: job[k] for k in job if k != "items"}
    items = job["items"]
    assert len(items) == 201 and [i["index"] for i in items] == list(range(201))
    bad = [i for i in items if not i["ok"]]
    assert [(i["index"], i["id"]) for i in bad] == [(57, "d57"), (120, "")]
    assert "documents[57]" in bad[0]["error"] and "text" in bad[0]["error"] and "id" in bad[1]["error"]
    assert items[3]["ok"] and items[3]["replaced_by"] == 200 and items[200]["chunks"] >= 1
    assert all(i["chunks"] >= 1 for i in items if i["ok"] and "replaced_by" not in i)
    assert "2 of 201 documents failed" in job["error"]
    assert http.get(f"/v1/knowledge_bases/{kb['id']}").json()["documents"] == 198
    hits = http.post(f"/v1/knowledge_bases/{kb['id']}/search", json={"query": "saffron crocus",
                                                                       "mode": "keyword"}).json()["data"]
    assert hits[0]["document_id"] == "d3"
    # nothing good at all: a 400 naming each bad document, nothing stored
    r = http.post(f"/v1/knowledge_bases/{kb['id']}/documents", json={"documents": [{"id": "x"}, {"text": "y"}]})
    assert r.status_code == 400 and "documents[0]" in r.json()["error"]["message"]
    assert "documents[1]" in r.json()["error"]["message"]


def minimal_pdf(text: str) -> bytes:
    """A one-page PDF (Helvetica text object, correct xref offsets) that pypdf reads in strict mode."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
               b"/Resources << /Font << /F1 5 0 R >> >> >>",
               b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
               b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def test_a_real_pdf_is_ingested_and_its_text_searchable(http):
    kb = make_kb(http, docs=None)
    pdf = minimal_pdf("Saffron threads are harvested by hand from crocus flowers.")
    job = http.post(f"/v1/knowledge_bases/{kb['id']}/documents?wait=true",
                    files=[("files", ("spice.pdf", pdf, "application/pdf"))]).json()
    assert job["status"] == "succeeded" and job["files"][0]["ok"] is True, job
    hit = http.post(f"/v1/knowledge_bases/{kb['id']}/search", json={"query": "crocus saffron",
                                                                      "mode": "keyword"}).json()["data"][0]
    assert hit["document_id"] == "spice.pdf" and hit["metadata"] == {"source": "spice.pdf", "pages": 1}
    assert "harvested by hand from crocus flowers" in hit["text"]


FUSION_DOCS = [
    {"id": "kittens", "text": "Kittens and cats purr, nap in the sun and chase mice around the house."},
    {"id": "manual", "text": "Feline model 7 printer manual: replace the toner cartridge when the light blinks."},
    {"id": "dogs", "text": "Dogs bark at strangers and love long walks in the park."},
    {"id": "tax", "text": "File your tax return before April to avoid a late penalty."},
]


def expected_rrf(keyword: list[str], dense: list[str], k: int, weights: dict) -> list[tuple[str, float]]:
    scores: dict[str, float] = {}
    for name, ranked in (("keyword", keyword), ("dense", dense)):
        for rank, doc in enumerate(ranked, start=1):
            scores[doc] = scores.get(doc, 0.0) + weights.get(name, 1.0) / (k + rank)
    return sorted(scores.items(), key=lambda kv: -kv[1])


def test_hybrid_search_takes_rrf_k_and_weights(http):
    kb = make_kb(http, docs=FUSION_DOCS)
    url = f"/v1/knowledge_bases/{kb['id']}/search"
    query = "feline companions"  # keyword: the printer manual (says "feline"); dense: the kittens

    def ranked(**body):
        r = http.post(url, json={"query": query, **body})
        assert r.status_code == 200, r.text
        return [(h["document_id"], h["score"]) for h in r.json()["data"]]

    keyword = [d for d, _ in ranked(mode="keyword")]
    dense = [d for d, _ in ranked(mode="dense")]
    assert keyword[0] != dense[0]
    for k, weights in [(60, {}), (0, {"keyword": 3}), (0, {"dense": 3}), (5, {"keyword": 0, "dense": 1})]:
        got = ranked(mode="hybrid", rrf_k=k, weights=weights)
        want = expected_rrf(keyword, dense, k, weights)
        assert [d for d, _ in got] == [d for d, _ in want], (k, weights)
        assert [s for _, s in got] == pytest.approx([s for _, s in want]), (k, weights)
    assert ranked(mode="hybrid", rrf_k=0, weights={"keyword": 3})[0][0] == keyword[0]
    assert ranked(mode="hybrid", rrf_k=0, weights={"dense": 3})[0][0] == dense[0]


def test_bad_fusion_parameters_are_400(http):
    kb = make_kb(http)
    cases = [({"rrf_k": -1}, "rrf_k must be an integer >= 0"),
             ({"rrf_k": "many"}, "rrf_k"),
             ({"weights": {"keyword": -1}}, "weights.keyword must be a finite number >= 0"),
             ({"weights": {"keyword": "heavy"}}, "weights.keyword"),
             ({"weights": {"sparse": 1}}, "unknown list 'sparse'"),
             ({"weights": {"keyword": 0, "dense": 0}}, "at least one of keyword and dense must be > 0"),
             ({"weights": {"dense": 2}, "mode": "keyword"}, "weights apply to mode \"hybrid\" only"),
             ({"weights": [1, 2]}, "weights")]
    for body, says in cases:
        r = http.post(f"/v1/knowledge_bases/{kb['id']}/search", json={"query": "cats", **body})
        assert r.status_code == 400, (body, r.text)
        assert says in r.json()["error"]["message"], (body, r.text)


def test_bad_input_is_4xx_never_500(http):
    kb = make_kb(http, docs=None)
    base = f"/v1/knowledge_bases/{kb['id']}"
    cases = [
        (http.post(f"{base}/search", json={"query": "anything"}), 400, "is empty"),
        (http.post("/v1/knowledge_bases", json={"name": "x", "chunk_size": 0}), 400, "chunk_size"),
        (http.post("/v1/knowledge_bases", json={"name": ""}), 400, "name"),
        (http.post("/v1/knowledge_bases", json={"name": "x", "embedding_model": "nope"}), 404, "nope"),
        (http.post(f"{base}/documents", json={"documents": [{"id": "a"}]}), 400, "text"),
        (http.post(f"{base}/documents", json={"docs": []}), 400, "documents"),
        (http.post(f"{base}/documents", content=b"not json", headers={"content-type": "application/json"}), 400,
         "JSON"),
        (http.post(f"{base}/documents", json={"documents": []}), 400, "no documents"),
        (http.post("/v1/knowledge_bases/nope/documents", json={"documents": DOCS}), 404, "nope"),
        (http.get(f"{base}/ingestions/ingest-nope"), 404, "ingest-nope"),
        (http.delete(f"{base}/documents/ghost"), 404, "ghost"),
    ]
    make_kb(http, name="full")
    full = "/v1/knowledge_bases/full/search"
    cases += [(http.post(full, json={"query": "cats", "mode": "fuzzy"}), 400, "mode"),
              (http.post(full, json={"query": "cats", "top_k": 0}), 400, "top_k"),
              (http.post(full, json={"query": "  "}), 400, "query"),
              (http.post(full, json={"query": "cats", "rerank": True, "ranker": "nope"}), 404, "nope"),
              (http.post(full, json={"query": "cats", "filters": {"topic": [1, 2]}}), 400, "")]
    for r, status, says in cases:
        assert r.status_code == status, (r.request.url, r.text)
        assert says in r.json()["error"]["message"], r.text


def test_embeddings_through_the_sdk(client):
    r = client.embeddings.create(model="all-MiniLM-L6-v2", input=["a cat sat", "a kitten rested", "tax law"])
    vectors = np.array([d.embedding for d in r.data])
    assert r.object == "list" and vectors.shape == (3, 384) and r.usage.prompt_tokens > 0
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]
    b64 = client.embeddings.create(model="all-MiniLM-L6-v2", input="a cat sat", encoding_format="base64")
    decoded = np.frombuffer(base64.b64decode(b64.data[0].embedding), dtype="<f4")  # the SDK leaves it encoded
    assert np.allclose(decoded, vectors[0], atol=1e-6)
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="text-embedding-nope", input="x")
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="all-MiniLM-L6-v2", input=[[1, 2, 3]])
