"""Retrieval benchmark on CISI, next to the bm25s package as the named baseline, in one run.

    python bench/rag.py [--data /work/shared/data/cisi] [--latency-sizes 10000,100000] [--json out.json]

0. keyword alone vs bm25s (no embedding): whole documents, and the default chunks;
1. quality: nDCG@10, recall@100, MRR for keyword, dense, hybrid, hybrid+rerank vs bm25s;
2. ingest speed: graftlm chunks/s divided by raw sentence-transformers encode of the same chunks;
3. chunk size: whole-document retrieval with small chunks vs the default;
4. query latency p50/p99 per mode on synthetic knowledge bases of 10k and 100k chunks, the hybrid query's
   breakdown (query embedding, keyword, dense, fusion + fetch), and the HNSW index's recall@10 vs exact.

Synthetic vectors are not uniform on the sphere (the worst case for any graph index, and unlike text
embeddings): they are 2,000 clusters in a 48-dimensional subspace of the 384 dimensions plus isotropic noise,
a stand-in for embeddings' low intrinsic dimension; recall is measured with query vectors drawn the same way.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from graftlm import rag
from graftlm.rag import embeddings, metrics
from graftlm.rag.backend import DocumentRows
from graftlm.rag.chunking import Chunk

DEFAULT_DATA = Path("/work/shared/data/cisi")
_FIELD = re.compile(r"^\.([ITAWXB])\b\s*(.*)$")


def parse_records(path: Path) -> dict[str, dict[str, str]]:
    """SMART records: ``.I id`` then fields ``.T/.A/.W/.B/.X``, each running until the next marker."""
    records: dict[str, dict[str, str]] = {}
    current, field = None, None
    for line in path.read_text(errors="replace").splitlines():
        m = _FIELD.match(line)
        if m and m.group(1) == "I":
            current, field = records.setdefault(m.group(2).strip(), {}), None
        elif m:
            field = m.group(1)
            if current is not None:
                current.setdefault(field, "")
                if m.group(2).strip():
                    current[field] += m.group(2).strip() + "\n"
        elif current is not None and field is not None:
            current[field] += line.strip() + "\n"
    return records


def load_cisi(data: Path):
    docs = []
    for doc_id, rec in parse_records(data / "CISI.ALL").items():
        title = " ".join(rec.get("T", "").split())
        abstract = " ".join(rec.get("W", "").split())
        docs.append({"id": doc_id, "text": f"{title}\n\n{abstract}".strip(), "metadata": {}})
    queries = {qid: " ".join((rec.get("T", "") + " " + rec.get("W", "")).split())
               for qid, rec in parse_records(data / "CISI.QRY").items()}
    qrels = metrics.load_qrels(data / "CISI.REL")
    queries = {q: t for q, t in queries.items() if q in qrels}
    return docs, queries, qrels


def doc_run(kb, db, queries, **kwargs) -> dict[str, list[str]]:
    return {q: [h["document_id"] for h in rag.search(kb, text, db=db, **kwargs)] for q, text in queries.items()}


def bm25s_run(docs, queries, k=100) -> dict[str, list[str]]:
    import bm25s
    import Stemmer

    stemmer = Stemmer.Stemmer("english")
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize([d["text"] for d in docs], stopwords="en", stemmer=stemmer, show_progress=False),
                    show_progress=False)
    qids = list(queries)
    tokens = bm25s.tokenize([queries[q] for q in qids], stopwords="en", stemmer=stemmer, show_progress=False)
    results, _ = retriever.retrieve(tokens, k=k, show_progress=False)
    return {q: [docs[i]["id"] for i in row] for q, row in zip(qids, results)}


def quality(docs, queries, qrels, db, chunk_size: int) -> tuple[dict, dict]:
    kb = rag.create_kb(f"cisi-{chunk_size}", chunk_size=chunk_size, chunk_overlap=min(32, chunk_size // 4), db=db)
    t0 = time.perf_counter()
    rag.ingest_documents(kb, docs, db=db)
    ingest_s = time.perf_counter() - t0
    runs = {mode: doc_run(kb, db, queries, mode=mode, top_k=100) for mode in rag.MODES}
    runs["hybrid+rerank"] = doc_run(kb, db, queries, mode="hybrid", top_k=100, rerank=True, rerank_top_n=100)
    scores = {name: metrics.evaluate(run, qrels, k=10, recall_k=100) for name, run in runs.items()}
    info = {**rag.describe_kb(kb, db=db), "ingest_s": ingest_s}
    return scores, info


def keyword_quality(docs, queries, qrels, db, chunk_size: int) -> dict:
    """Keyword mode alone, no embedding (constant vectors): whole documents (one chunk each, as bm25s sees them)
    and the default chunking, both through rag.search(mode="keyword")."""
    spans = embeddings.token_spans_for()
    out = {}
    for name, size in (("keyword, whole documents", None), (f"keyword, {chunk_size}-token chunks", chunk_size)):
        kb = rag.create_kb(f"cisi-kw-{size}", db=db)
        rows = []
        for d in docs:
            chunks = ([Chunk(0, 0, len(d["text"]), d["text"], 0)] if size is None else
                      rag.chunk_text(d["text"], chunk_size=size, chunk_overlap=min(32, size // 4), token_spans=spans))
            rows.append(DocumentRows(d["id"], {}, len(d["text"]), chunks,
                                     np.full((len(chunks), kb.dimension), kb.dimension ** -0.5, np.float32)))
        rag.open_store(db).replace_documents(kb, rows)
        out[name] = metrics.evaluate(doc_run(kb, db, queries, mode="keyword", top_k=100), qrels, k=10, recall_k=100)
    return out


def ingest_ratio(docs, db) -> dict:
    """graftlm ingest (chunk + embed + store) vs raw model.encode on the same chunk texts."""
    kb = rag.create_kb("cisi-speed", db=db)
    spans = embeddings.token_spans_for()
    texts = [c.text for d in docs for c in rag.chunk_text(d["text"], chunk_size=kb.chunk_size,
                                                            chunk_overlap=kb.chunk_overlap, token_spans=spans)]
    model = embeddings.get_model()
    model.encode(texts[:64], batch_size=64)  # warm up
    t0 = time.perf_counter()
    model.encode(texts, batch_size=64, normalize_embeddings=True, show_progress_bar=False)
    raw_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    rag.ingest_documents(kb, docs, db=db)
    ours_s = time.perf_counter() - t0
    return {"chunks": len(texts), "raw_encode_chunks_per_s": len(texts) / raw_s,
            "ingest_chunks_per_s": len(texts) / ours_s, "ratio": raw_s / ours_s}


class SyntheticVectors:
    """Clustered unit vectors in a low-dimensional subspace plus noise (see the module's docstring)."""

    def __init__(self, dim: int, rng, clusters: int = 2000, subspace: int = 48):
        self.rng, self.dim = rng, dim
        self.basis = rng.standard_normal((subspace, dim))
        self.centers = rng.standard_normal((clusters, subspace))

    def __call__(self, n: int) -> np.ndarray:
        c = self.centers[self.rng.integers(0, len(self.centers), n)]
        v = (c + 0.6 * self.rng.standard_normal(c.shape)) @ self.basis + 0.3 * self.rng.standard_normal((n, self.dim))
        return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def synthetic_kb(db, n_chunks: int, vocab: list[str], weights: np.ndarray, rng, vectors=None) -> object:
    """n_chunks of ~80 Zipf-distributed CISI words with synthetic unit vectors, written straight to the store."""
    kb = rag.create_kb(f"synthetic-{n_chunks}", db=db)
    store = rag.open_store(db)
    vectors = vectors or SyntheticVectors(kb.dimension, rng)
    per_doc = 10
    for lo in range(0, n_chunks, 5000):
        batch = []
        for d in range(lo // per_doc, min(lo + 5000, n_chunks) // per_doc):
            chunks = []
            drawn = rng.choice(len(vocab), size=(per_doc, 80), p=weights)  # one draw per document: cheap
            for n in range(per_doc):
                text = " ".join(vocab[w] for w in drawn[n])
                chunks.append(Chunk(n, 0, len(text), text, 80))
            vecs = vectors(per_doc)
            batch.append(DocumentRows(f"d{d}", {"shard": d % 4}, 0, chunks, vecs))
        store.replace_documents(kb, batch)
    return kb


def latency(docs, queries, db, sizes: list[int], n_queries: int = 60) -> dict:
    rng = np.random.default_rng(0)
    counts: dict[str, int] = {}
    for d in docs:
        for w in re.findall(r"[a-z]+", d["text"].lower()):
            counts[w] = counts.get(w, 0) + 1
    vocab = sorted(counts, key=counts.get, reverse=True)
    weights = 1.0 / np.arange(1, len(vocab) + 1)
    weights /= weights.sum()
    qtexts = list(queries.values())[:n_queries]
    out = {}
    for size in sizes:
        t0 = time.perf_counter()
        gen = SyntheticVectors(embeddings.dimension(), rng)
        kb = synthetic_kb(db, size, vocab, weights, rng, gen)
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        rag.search(kb, qtexts[0], mode="hybrid", db=db)  # folds the last writes into the keyword and dense indexes
        out[size] = {"build_s": build_s, "first_search_s": time.perf_counter() - t0}
        for mode in rag.MODES:
            rag.search(kb, qtexts[0], mode=mode, db=db)  # warm up
            times = []
            for q in qtexts:
                t = time.perf_counter()
                rag.search(kb, q, mode=mode, top_k=10, db=db)
                times.append((time.perf_counter() - t) * 1000)
            out[size][mode] = {"p50_ms": statistics.median(times), "p99_ms": float(np.percentile(times, 99))}
        out[size]["hybrid_breakdown_p50_ms"] = breakdown(kb, db, qtexts)
        out[size]["ann_recall@10"] = ann_recall(kb, db, gen)
        print(size, json.dumps(out[size]), flush=True)
    # how much of it is the query embedding (MiniLM on CPU)
    times = []
    for q in qtexts:
        t = time.perf_counter()
        embeddings.embed([q])
        times.append((time.perf_counter() - t) * 1000)
    out["query_embedding_p50_ms"] = statistics.median(times)
    return out


def breakdown(kb, db, qtexts) -> dict:
    """p50 of each step of a hybrid query (top 10, 50 candidates per list), timed one by one."""
    from graftlm.rag.fusion import rrf
    from graftlm.rag.text import query_words

    store = rag.open_store(db)
    steps: dict[str, list[float]] = {"query_embedding": [], "keyword": [], "dense": [], "fusion_and_fetch": []}
    for q in qtexts:
        t0 = time.perf_counter()
        vector = embeddings.embed([q], kb.embedding_model)[0]
        t1 = time.perf_counter()
        kw = store.keyword(kb, query_words(q), 50, {})
        t2 = time.perf_counter()
        dn = store.dense(kb, vector, 50, {})
        t3 = time.perf_counter()
        hits = rrf({"keyword": [h[0] for h in kw], "dense": [h[0] for h in dn]}, k=60, weights=None)[:10]
        store.fetch(kb, [h[0] for h in hits])
        t4 = time.perf_counter()
        for name, dt in zip(steps, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            steps[name].append(dt * 1000)
    return {name: statistics.median(v) for name, v in steps.items()}


def ann_recall(kb, db, gen, n: int = 200) -> float:
    """HNSW top 10 vs usearch's exact scan of the same index, for query vectors drawn like the data."""
    index = rag.open_store(db)._index(kb, "dense")
    queries = gen(n)
    got = index.index.search(queries, 10)
    exact = index.index.search(queries, 10, exact=True)
    return float(np.mean([len(set(got.keys[i].tolist()) & set(exact.keys[i].tolist())) / 10 for i in range(n)]))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--small-chunk", type=int, default=64)
    ap.add_argument("--latency-sizes", default="10000,100000")
    ap.add_argument("--skip", default="", help="comma list of: keyword,quality,ingest,chunks,latency")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    docs, queries, qrels = load_cisi(args.data)
    print(f"CISI: {len(docs)} documents, {len(queries)} judged queries")
    from workloads import cpu_name

    report: dict = {"cpu": cpu_name(), "cores": __import__("os").cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "rag.db"
        base = metrics.evaluate(bm25s_run(docs, queries), qrels, k=10, recall_k=100)
        if "keyword" not in skip:
            report["keyword"] = kw = keyword_quality(docs, queries, qrels, db, rag.kb.DEFAULT_CHUNK_SIZE)
            print(f"\nkeyword search vs bm25s (nDCG@10 {base['ndcg@10']:.4f}, R@100 {base['recall@100']:.4f}, "
                  f"MRR {base['mrr']:.4f})")
            for name, s in kw.items():
                print(f"{name:<34}{s['ndcg@10']:>9.4f}{s['recall@100']:>8.4f}{s['mrr']:>8.4f}"
                      f"{s['ndcg@10'] / base['ndcg@10']:>8.3f}x")
        if "quality" not in skip:
            scores, info = quality(docs, queries, qrels, db, rag.kb.DEFAULT_CHUNK_SIZE)
            report["quality"] = {"bm25s (baseline)": base, **scores}
            report["quality_kb"] = info
            print(f"\nquality (chunk_size {info['chunk_size']}, {info['chunks']} chunks)")
            print(f"{'method':<18}{'nDCG@10':>9}{'R@100':>8}{'MRR':>8}{'nDCG vs bm25s':>15}")
            for name, s in report["quality"].items():
                print(f"{name:<18}{s['ndcg@10']:>9.4f}{s['recall@100']:>8.4f}{s['mrr']:>8.4f}"
                      f"{s['ndcg@10'] / base['ndcg@10']:>14.3f}x")
        if "chunks" not in skip:
            small, info = quality(docs, queries, qrels, db, args.small_chunk)
            report["small_chunks"] = {"chunk_size": args.small_chunk, "chunks": info["chunks"], **small}
            print(f"\nchunk_size {args.small_chunk} ({info['chunks']} chunks), whole-document retrieval")
            for name, s in small.items():
                ref = report.get("quality", {}).get(name)
                delta = f"  (default: {ref['ndcg@10']:.4f} / {ref['recall@100']:.4f})" if ref else ""
                print(f"{name:<18}{s['ndcg@10']:>9.4f}{s['recall@100']:>8.4f}{s['mrr']:>8.4f}{delta}")
        if "ingest" not in skip:
            report["ingest"] = r = ingest_ratio(docs, db)
            print(f"\ningest: {r['ingest_chunks_per_s']:.1f} chunks/s vs raw encode {r['raw_encode_chunks_per_s']:.1f}"
                  f" chunks/s -> ratio {r['ratio']:.3f} ({r['chunks']} chunks)")
        if "latency" not in skip:
            sizes = [int(s) for s in args.latency_sizes.split(",") if s]
            report["latency"] = lat = latency(docs, queries, db, sizes)
            print(f"\nquery latency, top_k=10, no rerank (query embedding alone p50 "
                  f"{lat['query_embedding_p50_ms']:.1f} ms)")
            for size in sizes:
                row = "  ".join(f"{m} p50 {lat[size][m]['p50_ms']:.1f} / p99 {lat[size][m]['p99_ms']:.1f} ms"
                                for m in rag.MODES)
                print(f"{size:>7} chunks (built in {lat[size]['build_s']:.0f} s, first search after the writes "
                      f"{lat[size]['first_search_s']:.1f} s): {row}")
        rag.close_stores()
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return report


if __name__ == "__main__":
    sys.exit(main() and 0)
