"""Scorers: ``fn(prediction, reference, **options) -> float`` in [0, 1] (1 = right).

Text scorers compare a model's answer with the expected one; ``regex``, ``json_valid`` and
``json_schema`` check the answer alone (the reference is the pattern / schema, or ignored);
``json_fields`` compares the answer's JSON with the reference's field by field.
``judge:<model>`` asks ``<model>`` (any registered model or endpoint) to grade each answer 1–5 against
the question and reference (graftlm.evals.judge), mapped to [0, 1]; an unparseable grade scores 0.
"""

from __future__ import annotations

import json
import math
import re
import string
from collections import Counter

from graftlm.evals.judge import JUDGE_PREFIX, judge_model_of, judge_pointwise, model_judge

_PUNCT = str.maketrans({c: " " for c in string.punctuation if c not in "_"})


def normalize(text: str) -> str:
    """Lowercase, punctuation (except '_') to spaces, whitespace collapsed."""
    return " ".join(str(text).lower().translate(_PUNCT).split())


def tokens(text: str) -> list[str]:
    return normalize(text).split()


def exact_match(prediction: str, reference: str) -> float:
    """Equal after stripping surrounding whitespace only."""
    return float(str(prediction).strip() == str(reference).strip())


def normalized_match(prediction: str, reference: str) -> float:
    """Equal after ``normalize`` (case, whitespace and punctuation insensitive)."""
    return float(normalize(prediction) == normalize(reference))


def label_accuracy(prediction: str, reference: str) -> float:
    """Classification: right when the normalized answer equals the label, or when the label is the
    answer's first line or first word (a model that says "balance\\nThe user asks..." still chose
    "balance"). A label of several words must match the first line, not just the first word."""
    label = normalize(reference)
    if not label:
        return 0.0
    answer = normalize(prediction)
    first_line = normalize(next((ln for ln in str(prediction).splitlines() if ln.strip()), ""))
    first_word = answer.split()[0] if answer else ""
    return float(label in (answer, first_line, first_word))


def contains(prediction: str, reference: str) -> float:
    """1 when the normalized reference appears as whole words in the normalized answer (short-answer QA)."""
    ref = normalize(reference)
    return float(bool(ref) and f" {ref} " in f" {normalize(prediction)} ")


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD-style bag-of-tokens F1 on normalized tokens."""
    p, r = tokens(prediction), tokens(reference)
    if not p and not r:
        return 1.0
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


def _lcs(a: list[str], b: list[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, reference: str, beta: float = 1.0) -> float:
    """ROUGE-L F-measure from the longest common subsequence of normalized tokens."""
    p, r = tokens(prediction), tokens(reference)
    if not p or not r:
        return float(not p and not r)
    lcs = _lcs(p, r)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(p), lcs / len(r)
    return (1 + beta**2) * precision * recall / (recall + beta**2 * precision)


def bleu(prediction: str, reference: str, max_n: int = 4) -> float:
    """Sentence BLEU up to ``max_n``-grams, geometric mean with add-one smoothing for n > 1
    (Lin & Och 2004 "smoothing 2"; unigram precision unsmoothed), times the brevity penalty."""
    p, r = tokens(prediction), tokens(reference)
    if not p or not r:
        return 0.0
    log_sum = 0.0
    for n in range(1, max_n + 1):
        pn = Counter(tuple(p[i:i + n]) for i in range(len(p) - n + 1))
        rn = Counter(tuple(r[i:i + n]) for i in range(len(r) - n + 1))
        matches, total = sum((pn & rn).values()), max(len(p) - n + 1, 0)
        if n > 1:
            matches, total = matches + 1, total + 1
        if matches == 0 or total == 0:
            return 0.0
        log_sum += math.log(matches / total) / max_n
    bp = 1.0 if len(p) > len(r) else math.exp(1 - len(r) / len(p))
    return bp * math.exp(log_sum)


def regex_match(prediction: str, pattern: str) -> float:
    """1 when ``pattern`` (the reference) matches anywhere in the answer."""
    return float(re.search(pattern, str(prediction), flags=re.S) is not None)


def _strip_fence(text: str) -> str:
    m = re.search(r"```(?:json)?\s*(.*?)```", text, flags=re.S)
    return m.group(1) if m else text


def json_valid(prediction: str, reference=None) -> float:
    """1 when the answer (or a ```json fenced block in it) parses as JSON."""
    try:
        json.loads(_strip_fence(str(prediction)))
        return 1.0
    except ValueError:
        return 0.0


def json_schema(prediction: str, schema) -> float:
    """1 when the answer parses as JSON and validates against ``schema`` (dict or JSON text)."""
    import jsonschema

    if isinstance(schema, str):
        schema = json.loads(schema)
    try:
        value = json.loads(_strip_fence(str(prediction)))
    except ValueError:
        return 0.0
    return float(jsonschema.Draft202012Validator(schema).is_valid(value))


def _fields(value, prefix: str = "") -> dict:
    """Nested objects flattened to {"a.b": leaf}; a non-object is one field named ``prefix``."""
    if not isinstance(value, dict) or not value:
        return {prefix: value}
    out = {}
    for k, v in value.items():
        out.update(_fields(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def json_fields(prediction: str, reference) -> float:
    """Fraction of the reference's JSON fields (nested objects flattened to dotted paths) that the
    answer's parsed JSON has with an equal value; an answer that is not JSON scores 0. Field order and
    formatting do not matter, unlike ``exact_match`` on JSON text."""
    if isinstance(reference, str):
        try:
            reference = json.loads(_strip_fence(reference))
        except ValueError as e:
            raise _error(f"scorer 'json_fields' needs JSON references; got {reference[:80]!r}") from e
    try:
        value = json.loads(_strip_fence(str(prediction)))
    except ValueError:
        return 0.0
    want, got = _fields(reference), _fields(value)
    return sum(k in got and got[k] == v for k, v in want.items()) / len(want)


def embedding_similarity(prediction: str, reference: str, model: str | None = None) -> float:
    """Cosine similarity of sentence embeddings (all-MiniLM-L6-v2 by default), clipped to [0, 1]."""
    return embedding_similarities([prediction], [reference], model)[0]


def embedding_similarities(predictions: list[str], references: list[str], model: str | None = None) -> list[float]:
    from graftlm.rag.embeddings import embed

    a, b = embed(list(map(str, predictions)), model), embed(list(map(str, references)), model)
    return [min(1.0, max(0.0, float(x))) for x in (a * b).sum(axis=1)]


SCORERS = {
    "exact_match": exact_match, "normalized_match": normalized_match, "label_accuracy": label_accuracy,
    "contains": contains,
    "token_f1": token_f1, "rouge_l": rouge_l, "bleu": bleu, "regex": regex_match, "json_valid": json_valid,
    "json_schema": json_schema, "json_fields": json_fields, "embedding_similarity": embedding_similarity,
}


def _error(message: str, **kw):
    from graftlm.errors import GraftError

    return GraftError(message, param="scorers", **kw)


def check_judge_model(model: str) -> None:
    """A GraftError unless ``model`` names a registered model or a live endpoint."""
    from graftlm.clusters.endpoints import find_endpoint
    from graftlm.errors import NotFound
    from graftlm.models.catalog import get_model

    if not model.strip():
        raise _error("scorer 'judge:' needs a model: judge:<model id or endpoint name>")
    if find_endpoint(model) is not None:
        return
    try:
        get_model(model)
    except NotFound as e:
        raise _error(f"unknown judge model {model!r} in scorer 'judge:{model}': {e.message}",
                     code="model_not_found") from e


def check_scorer(name: str) -> None:
    """A GraftError unless ``name`` is a known scorer or ``judge:<registered model>``."""
    model = judge_model_of(str(name))
    if model is not None:
        check_judge_model(model)
    elif name not in SCORERS:
        raise _error(f"unknown scorer {name!r}; known: {', '.join(SCORERS)}, {JUDGE_PREFIX}<model>")


def judge_scores(predictions: list[str], references: list, questions: list[str] | None = None, *,
                 model: str, judge=None, max_tokens: int = 48) -> list[float]:
    """Pointwise 1–5 grades from ``model`` (or a ``judge`` function) as (grade − 1) / 4; unparseable -> 0."""
    if judge is None:
        check_judge_model(model)
    questions = questions or [""] * len(predictions)
    items = [{"question": q, "answer": str(p), "reference": None if r is None else str(r)}
             for q, p, r in zip(questions, predictions, references)]
    graded = judge_pointwise(items, judge or model_judge(model, max_tokens=max_tokens))
    return [0.0 if g["score"] is None else (g["score"] - 1) / 4 for g in graded]


def score(name: str, predictions: list[str], references: list, *, questions: list[str] | None = None,
          **options) -> list[float]:
    """Score many pairs with one scorer (embedding similarity is embedded in one batch, judge prompts
    generated in one batch). ``questions`` are used by ``judge:<model>`` only."""
    model = judge_model_of(name)
    if model is not None:
        return judge_scores(predictions, references, questions, model=model, **options)
    check_scorer(name)
    if name == "embedding_similarity":
        return embedding_similarities(predictions, references, options.get("model"))
    fn = SCORERS[name]
    return [fn(p, r, **options) for p, r in zip(predictions, references)]
