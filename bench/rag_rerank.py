"""Does an LLM yes/no reranker help retrieval on CISI? nDCG@10 of hybrid vs hybrid + LLM rerank, same run.

    python bench/rag_rerank.py [--queries 20] [--candidates 20] [--model smollm2-135m-instruct] [--db cisi.db]

The LLM (a hosted model from GRAFT_HOME, default ~/.graft) scores p(yes) for "Is this passage relevant to
the question?" on the hybrid top ``--candidates`` chunks; the bi-encoder cosine rerank is shown as a second
reference. A subset of queries keeps it to minutes on CPU. ``--db`` keeps the ingested KB between runs.

Measured (first 20 judged CISI queries, 20 candidates, 2 shared CPU cores): nDCG@10 hybrid 0.410,
hybrid+cosine 0.367 (0.89x), hybrid+llm:smollm2-135m-instruct 0.236 (0.58x) at 48 s/query: the 135M
model's p(yes) is worse than the first stage's order, so it does not help here.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from rag import DEFAULT_DATA, doc_run, load_cisi  # noqa: E402

from graftlm import rag  # noqa: E402
from graftlm.rag import metrics  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--queries", type=int, default=20, help="first N judged queries")
    ap.add_argument("--candidates", type=int, default=20, help="hybrid hits the LLM rescoring sees")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--db", default=None, help="SQLite file for the CISI knowledge base (reused if present)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    docs, queries, qrels = load_cisi(args.data)
    qids = sorted(queries, key=int)[:args.queries]
    queries = {q: queries[q] for q in qids}
    qrels = {q: qrels[q] for q in qids}
    db = args.db or str(Path(tempfile.mkdtemp()) / "cisi.db")
    kb = next((k for k in rag.list_kbs(db=db) if k.name == "cisi"), None)
    if kb is None:
        kb = rag.create_kb("cisi", db=db)
        t0 = time.perf_counter()
        rag.ingest_documents(kb, docs, db=db)
        print(f"ingested {len(docs)} documents in {time.perf_counter() - t0:.0f}s")

    rows = {}
    for name, kw in [("hybrid", {}),
                     ("hybrid+cosine", {"rerank": True, "ranker": "cosine", "rerank_top_n": args.candidates}),
                     (f"hybrid+llm:{args.model}", {"rerank": True, "ranker": f"llm:{args.model}",
                                                   "rerank_top_n": args.candidates})]:
        t0 = time.perf_counter()
        run = doc_run(kb, db, queries, mode="hybrid", top_k=10, **kw)
        seconds = time.perf_counter() - t0
        rows[name] = {**metrics.evaluate(run, qrels, k=10, recall_k=10), "s_per_query": seconds / len(queries)}
        print(f"{name:36s} nDCG@10 {rows[name]['ndcg@10']:.4f}  P@10 {rows[name]['precision@10']:.4f}  "
              f"MRR {rows[name]['mrr']:.4f}  {rows[name]['s_per_query']:.2f} s/query", flush=True)
    base = rows["hybrid"]["ndcg@10"]
    for name, r in rows.items():
        print(f"{name:36s} nDCG@10 ratio vs hybrid: {r['ndcg@10'] / base:.3f}")
    if args.json:
        args.json.write_text(json.dumps({"queries": len(queries), "candidates": args.candidates, "rows": rows},
                                        indent=2))


if __name__ == "__main__":
    main()
