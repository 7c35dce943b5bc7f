"""Tokenize examples exactly as they are served: the model's chat template, loss only where it counts.

Training and serving share ``render_prompt`` so the training prompt equals the serving prompt token
for token. Assistant turns with weight 1 are labelled up to and including the EOS token that ends
them (so the model learns to stop); raw text is labelled everywhere and ends with EOS.
"""

from __future__ import annotations

IGNORE_INDEX = -100


def _template(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    plain = [{"role": m["role"], "content": m["content"]} for m in messages]
    return tokenizer.apply_chat_template(plain, tokenize=False, add_generation_prompt=add_generation_prompt)


def render_prompt(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of a chat prompt ready for generation (what the server feeds the engine)."""
    text = _template(tokenizer, messages, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _assistant_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The full rendered conversation and the character spans to learn (assistant content + EOS)."""
    full = _template(tokenizer, messages, add_generation_prompt=False)
    eos = tokenizer.eos_token or ""
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant" or not m.get("weight", 1):
            continue
        start = len(_template(tokenizer, messages[:i], add_generation_prompt=True))
        upto = _template(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if not full.startswith(upto) or not upto[:start] == full[:start]:
            raise ValueError("the chat template does not render conversations prefix by prefix; "
                             "cannot locate assistant turns for loss masking")
        segment = upto[start:]
        cut = segment.rfind(eos) if eos else -1
        end = start + cut + len(eos) if cut >= 0 else len(upto)
        spans.append((start, end))
    return full, spans


def encode_example(tokenizer, example: dict, max_length: int | None = None) -> dict:
    """``{"input_ids", "labels"}`` for one normalized example; truncated on the right to max_length."""
    if "text" in example:
        ids = tokenizer(example["text"], add_special_tokens=False)["input_ids"]
        if tokenizer.eos_token_id is not None:
            ids = ids + [tokenizer.eos_token_id]
        labels = list(ids)
    else:
        text, spans = _assistant_spans(tokenizer, example["messages"])
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = enc["input_ids"]
        labels = [IGNORE_INDEX] * len(ids)
        for t, (a, b) in enumerate(enc["offset_mapping"]):
            if b > a and any(s <= a and b <= e for s, e in spans):
                labels[t] = ids[t]
    if max_length is not None and len(ids) > max_length:
        ids, labels = ids[:max_length], labels[:max_length]
    return {"input_ids": ids, "labels": labels}
