"""Synthetic data: grounded question–answer pairs from documents, variants of real queries, and
judge-scored outputs turned into SFT or preference data.

Pipeline per chunk: key phrase → seed question (from the context, about the phrase) → optional
evolution (reasoning, multi-context, conditional) → answer from the context → filters (answerable:
the answer's words overlap the context; not a duplicate; language and length checks) → chat JSONL
(train + held-out eval) where every line cites its chunk in a top-level "source" field.

A generator is any function ``prompts (list of message lists) -> texts``; ``model_generator(model)``
batches them through graftlm's engine. Tests inject a stub.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from graftlm.errors import GraftError
from graftlm.evals.scorers import normalize

Generator = Callable[[list[list[dict]]], list[str]]
EVOLUTIONS = ("reasoning", "multi_context", "conditional")
_STOP = set("""a an the and or but if of to in on at by for with from as is are was were be been being it its this
that these those there here what which who whom whose when where why how not no do does did can could should would
will may might must have has had i you he she we they them his her their our your my me us than then so such into
about over under more most other some any each all also only very just""".split())


def model_generator(model: str, *, max_tokens: int = 96, temperature: float = 0.0, seed: int | None = 0) -> Generator:
    from graftlm.inference.service import chat_batch

    def generate(prompts):
        return [o["text"] for o in chat_batch([(model, p) for p in prompts], max_tokens=max_tokens,
                                              temperature=temperature, seed=seed)]

    return generate


@dataclass
class Filters:
    """Which examples are kept. Set a check to a permissive value to switch it off."""
    min_answer_overlap: float = 0.5   # share of the answer's content words found in the context
    min_question_chars: int = 10
    max_question_chars: int = 400
    min_answer_chars: int = 1
    max_answer_chars: int = 1500
    min_latin_letters: float = 0.6     # language check: share of letters that are ASCII (English-like text)
    dedupe: bool = True


def spread(items: list, n: int | None) -> list:
    """At most ``n`` of ``items``, evenly spaced (so a cap samples every document, not the first few)."""
    if n is None or n >= len(items):
        return list(items)
    return [items[i * len(items) // n] for i in range(max(n, 0))]


def content_words(text: str) -> list[str]:
    return [w for w in normalize(text).split() if w not in _STOP and len(w) > 1]


def key_phrase(text: str) -> str:
    """The chunk's most frequent content bigram (else word): what the seed question is about."""
    words = content_words(text)
    bigrams = Counter(zip(words, words[1:]))
    if bigrams and bigrams.most_common(1)[0][1] > 1:
        return " ".join(bigrams.most_common(1)[0][0])
    return Counter(words).most_common(1)[0][0] if words else text[:40]


def load_chunks(source: str | Path, *, chunk_size: int = 200, chunk_overlap: int = 20) -> list[dict]:
    """[{"document_id", "chunk_id", "text"}] from a directory of .txt/.md files or a knowledge base id."""
    path = Path(source)
    if path.is_dir():
        from graftlm.rag.chunking import chunk_text

        chunks = []
        for f in sorted(p for p in path.rglob("*") if p.suffix.lower() in (".txt", ".md")):
            doc_id = str(f.relative_to(path))
            for c in chunk_text(f.read_text(encoding="utf-8", errors="replace"), chunk_size=chunk_size,
                                chunk_overlap=chunk_overlap):
                if c.text.strip():
                    chunks.append({"document_id": doc_id, "chunk_id": f"{doc_id}#{c.index}", "text": c.text})
        if not chunks:
            raise GraftError(f"{path} has no .txt or .md text", param="source")
        return chunks
    import numpy as np

    from graftlm.rag.kb import _resolve

    store, kb = _resolve(str(source), None)  # every chunk: a dense query whose limit is the chunk count
    n_chunks = store.counts(kb)[1]
    if n_chunks == 0:
        raise GraftError(f"knowledge base {source!r} is empty", param="source")
    hits = store.dense(kb, np.ones(kb.dimension, dtype=np.float32) / np.sqrt(kb.dimension), n_chunks, {})
    rows = store.fetch(kb, [h[0] for h in hits])
    return sorted(({"document_id": r["document_id"], "chunk_id": r["chunk_id"], "text": r["text"]}
                   for r in rows.values()), key=lambda c: c["chunk_id"])


def _ask(content: str) -> list[dict]:
    return [{"role": "user", "content": content}]


def seed_prompt(chunk: str, phrase: str) -> list[dict]:
    return _ask(f"Context:\n{chunk}\n\nWrite one question about \"{phrase}\" that the context answers. "
                "Reply with the question only.")


def evolve_prompt(kind: str, question: str, chunk: str, other: str | None) -> list[dict]:
    how = {"reasoning": "so that answering it needs a step of reasoning over the context (not a simple lookup)",
           "multi_context": "so that answering it needs both contexts",
           "conditional": "by adding a condition (\"if ...\" or \"when ...\") that the context covers"}[kind]
    ctx = f"Context 1:\n{chunk}\n\nContext 2:\n{other}" if kind == "multi_context" and other else f"Context:\n{chunk}"
    return _ask(f"{ctx}\n\nRewrite this question {how}. Reply with the new question only.\nQuestion: {question}")


def answer_prompt(question: str, context: str) -> list[dict]:
    return _ask(f"Context:\n{context}\n\nAnswer the question using only the context, briefly.\nQuestion: {question}")


def _clean(text: str) -> str:
    text = str(text).strip().strip('"').strip()
    return re.sub(r"^(question|answer|q|a)\s*[:.]\s*", "", text, flags=re.I).strip()


def check(question: str, answer: str, context: str, filters: Filters, seen: set) -> str | None:
    """None when the example is kept, else the name of the failed check."""
    if not filters.min_question_chars <= len(question) <= filters.max_question_chars:
        return "question_length"
    if not filters.min_answer_chars <= len(answer) <= filters.max_answer_chars:
        return "answer_length"
    letters = [c for c in question + answer if c.isalpha()]
    if letters and sum(c.isascii() for c in letters) / len(letters) < filters.min_latin_letters:
        return "language"
    words = content_words(answer)
    ctx = set(content_words(context))
    overlap = sum(w in ctx for w in words) / len(words) if words else 0.0
    if overlap < filters.min_answer_overlap:
        return "not_answerable"
    if filters.dedupe and normalize(question) in seen:
        return "duplicate"
    return None


def synthesize(source: str | Path, out_dir: str | Path, *, model: str | None = None, generator: Generator | None = None,
               questions_per_chunk: int = 1, evolve_fraction: float = 0.5, evolutions=EVOLUTIONS,
               eval_fraction: float = 0.2, system_prompt: str | None = None, filters: Filters | None = None,
               max_chunks: int | None = None, max_examples: int | None = None, seed: int = 0) -> dict:
    """Write ``out_dir/train.jsonl`` and ``out_dir/eval.jsonl``; returns a report with counts and
    rejections per reason. Lines: {"messages": [...], "source": {"document_id", "chunk_id", "evolution"}}.
    ``max_examples`` caps the questions generated (spread over the chunks, before filtering)."""
    if generator is None:
        if model is None:
            raise GraftError("give a model (or a generator function) to write questions", param="model")
        generator = model_generator(model)
    filters = filters or Filters()
    rng = random.Random(seed)
    chunks = load_chunks(source)[:max_chunks]
    jobs = spread([(c, i) for c in chunks for i in range(questions_per_chunk)], max_examples)
    questions = [_clean(q) for q in generator([seed_prompt(c["text"], key_phrase(c["text"])) for c, _ in jobs])]
    kinds = [rng.choice(evolutions) if evolutions and rng.random() < evolve_fraction else None for _ in jobs]
    others = [rng.choice([o for o in chunks if o is not c] or [c]) if k == "multi_context" else None
              for (c, _), k in zip(jobs, kinds)]
    evolve_at = [i for i, k in enumerate(kinds) if k]
    evolved = generator([evolve_prompt(kinds[i], questions[i], jobs[i][0]["text"], others[i] and others[i]["text"])
                         for i in evolve_at])
    for i, q in zip(evolve_at, evolved):
        questions[i] = _clean(q)
    contexts = [c["text"] + (f"\n\n{o['text']}" if o else "") for (c, _), o in zip(jobs, others)]
    answers = [_clean(a) for a in generator([answer_prompt(q, ctx) for q, ctx in zip(questions, contexts)])]
    kept, rejected, seen = [], Counter(), set()
    for (c, _), q, a, ctx, kind, other in zip(jobs, questions, answers, contexts, kinds, others):
        why = check(q, a, ctx, filters, seen)
        if why:
            rejected[why] += 1
            continue
        seen.add(normalize(q))
        msgs = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
            {"role": "user", "content": q}, {"role": "assistant", "content": a}]
        source_ref = {"document_id": c["document_id"], "chunk_id": c["chunk_id"], "evolution": kind}
        if other:
            source_ref["also_chunk_id"] = other["chunk_id"]
        kept.append({"messages": msgs, "source": source_ref})
    rng.shuffle(kept)
    n_eval = int(round(len(kept) * eval_fraction)) if len(kept) > 1 else 0
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(out_dir / "eval.jsonl", kept[:n_eval])
    write_jsonl(out_dir / "train.jsonl", kept[n_eval:])
    report = {"chunks": len(chunks), "generated": len(jobs), "kept": len(kept), "train": len(kept) - n_eval,
              "eval": n_eval, "rejected": dict(rejected), "filters": asdict(filters),
              "train_path": str(out_dir / "train.jsonl"), "eval_path": str(out_dir / "eval.jsonl")}
    (out_dir / "synth_report.json").write_text(json.dumps(report, indent=1))
    return report


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")


def _read_queries(path: str | Path) -> list[dict]:
    """Lines {"query"[, "answer"]} or chat lines (last user turn [+ assistant answer])."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        obj = json.loads(line)
        if "messages" in obj:
            msgs = obj["messages"]
            answer = msgs[-1]["content"] if msgs[-1]["role"] == "assistant" else None
            query = next(m["content"] for m in reversed(msgs) if m["role"] == "user")
            system = next((m["content"] for m in msgs if m["role"] == "system"), None)
            out.append({"query": query, "answer": answer, "system": system})
        else:
            out.append({"query": obj["query"], "answer": obj.get("answer"), "system": obj.get("system")})
    return out


def from_queries(queries_path: str | Path, out_path: str | Path, *, model: str | None = None,
                 generator: Generator | None = None, variants: int = 3, filters: Filters | None = None,
                 max_examples: int | None = None) -> dict:
    """Paraphrases of real user queries. A query with a known answer yields chat lines (the answer carried
    over); one without yields {"query", "source": {"query_index"}} lines to be answered later.
    ``max_examples`` caps the variants generated (spread over the queries)."""
    generator = generator or model_generator(model or _required("model"), temperature=0.8, seed=None)
    filters = filters or Filters()
    rows = _read_queries(queries_path)
    jobs = spread([(i, n) for i in range(len(rows)) for n in range(variants)], max_examples)
    prompts = [_ask(f"Rewrite this user request {n + 1} different way{'s' if n else ''} with the same meaning. "
                    f"Reply with the new request only.\nRequest: {rows[i]['query']}") for i, n in jobs]
    texts = generator(prompts)
    seen = {normalize(r["query"]) for r in rows}
    out, rejected = [], Counter()
    for (row, _), text in zip(jobs, texts):
        r, q = rows[row], _clean(text)
        if not filters.min_question_chars <= len(q) <= filters.max_question_chars:
            rejected["question_length"] += 1
            continue
        if filters.dedupe and normalize(q) in seen:
            rejected["duplicate"] += 1
            continue
        seen.add(normalize(q))
        src = {"query_index": row, "original": r["query"]}
        if r["answer"] is not None:
            msgs = ([{"role": "system", "content": r["system"]}] if r["system"] else []) + [
                {"role": "user", "content": q}, {"role": "assistant", "content": r["answer"]}]
            out.append({"messages": msgs, "source": src})
        else:
            out.append({"query": q, "source": src})
    write_jsonl(Path(out_path), out)
    return {"queries": len(rows), "generated": len(texts), "kept": len(out), "rejected": dict(rejected),
            "path": str(out_path)}


def _required(name: str):
    raise GraftError(f"give a {name} (or a generator function)", param=name)


def training_lines(items: list[dict], *, min_score: int = 4) -> tuple[list[dict], list[dict]]:
    """items: [{"messages" (prompt), "scored": [(1–5 judge score, answer), ...], "source"?}] → (SFT lines,
    preference lines). An SFT line keeps the best answer when it scores ≥ ``min_score``; a preference line
    pairs the best (chosen) with the worst (rejected) when their scores differ."""
    sft, pref = [], []
    for it in items:
        ranked = sorted(it["scored"], key=lambda x: -x[0])
        (best_s, best), (worst_s, worst) = ranked[0], ranked[-1]
        if best_s >= min_score:
            sft.append({"messages": it["messages"] + [{"role": "assistant", "content": best}],
                        "source": {**it.get("source", {}), "judge_score": best_s}})
        if best_s > worst_s:
            pref.append({"prompt": it["messages"], "chosen": [{"role": "assistant", "content": best}],
                         "rejected": [{"role": "assistant", "content": worst}], "scores": [best_s, worst_s]})
    return sft, pref


def judged_training_data(items: list[dict], judge, *, sft_path: str | Path | None = None,
                         preference_path: str | Path | None = None, min_score: int = 4) -> dict:
    """items: [{"messages" (prompt), "candidates": [answers]}]. Each candidate is judged pointwise (1–5), then
    ``training_lines`` picks SFT and preference lines: {"prompt", "chosen", "rejected", "scores"}."""
    from graftlm.evals.judge import judge_pointwise
    from graftlm.evals.prompts import question

    flat = [{"question": question(it["messages"]), "answer": c, "reference": it.get("reference")}
            for it in items for c in it["candidates"]]
    scores = iter(s["score"] for s in judge_pointwise(flat, judge))
    scored = [{"messages": it["messages"], "scored": [(next(scores) or 0, c) for c in it["candidates"]]}
              for it in items]
    sft, pref = training_lines(scored, min_score=min_score)
    if sft_path:
        write_jsonl(Path(sft_path), sft)
    if preference_path:
        write_jsonl(Path(preference_path), pref)
    return {"items": len(items), "sft": len(sft), "preference": len(pref)}
