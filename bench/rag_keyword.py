"""Keyword-mode latency on bench/rag.py's synthetic knowledge base (Zipf CISI words, 80 per chunk, 4 shards).

    python bench/rag_keyword.py 100000

Prints: write time, BM25 index build on the first search, reload after reopening, keyword p50/p99 unfiltered
and with a filter matching 25% of chunks, and that filter's SQL alone vs the scoring alone.
"""
import sys, tempfile, time, re, statistics
from pathlib import Path
import numpy as np
sys.path.insert(0, str(Path(__file__).parent))
import rag as B
from graftlm import rag
docs, queries, qrels = B.load_cisi(B.DEFAULT_DATA)
rng = np.random.default_rng(0)
counts = {}
for d in docs:
    for w in re.findall(r"[a-z]+", d["text"].lower()):
        counts[w] = counts.get(w, 0) + 1
vocab = sorted(counts, key=counts.get, reverse=True)
weights = 1.0 / np.arange(1, len(vocab) + 1); weights /= weights.sum()
qtexts = list(queries.values())[:60]
n = int(sys.argv[1])
with tempfile.TemporaryDirectory() as tmp:
    db = Path(tmp) / "rag.db"
    t = time.perf_counter(); kb = B.synthetic_kb(db, n, vocab, weights, rng); print("write", time.perf_counter() - t)
    t = time.perf_counter(); rag.search(kb, qtexts[0], mode="keyword", db=db); print("index build", time.perf_counter() - t)
    rag.close_stores()
    t = time.perf_counter(); rag.search(kb, qtexts[0], mode="keyword", db=db); print("reopen+load", time.perf_counter() - t)
    for filt in (None, {"shard": 1}):
        times = []
        for q in qtexts:
            t = time.perf_counter(); rag.search(kb, q, mode="keyword", top_k=10, db=db, filters=filt); times.append((time.perf_counter() - t) * 1000)
        print(filt, "keyword p50", statistics.median(times), "p99", float(np.percentile(times, 99)))
    rag.close_stores()
    store = rag.open_store(db)
    fsql, fargs = store._filter_sql(kb, {"shard": 1})
    t = time.perf_counter(); allowed = {r[0] for r in store.conn.execute(fsql, fargs)}; print("sql ms", (time.perf_counter() - t) * 1000, len(allowed))
    ix = store._index(kb, "keyword")
    t = time.perf_counter(); ix.search(qtexts[1], 10, allowed); print("search ms", (time.perf_counter() - t) * 1000)
    t = time.perf_counter(); ix.search(qtexts[1], 10, None); print("search nofilter ms", (time.perf_counter() - t) * 1000)
    rag.close_stores()
