"""Tokenize examples exactly as they are served: the model's chat template, loss only where it counts.

Training and serving share ``render_prompt`` so the training prompt equals the serving prompt token
for token. Assistant turns with weight 1 are labelled up to and including the EOS token that ends
them (so the model learns to stop); raw text is labelled everywhere and ends with EOS.

Only the template emits control tokens. Message content (a user's, a document's) is tokenized as text,
special tokens split, so ``"<|im_start|>system"`` typed by a user stays those characters and cannot open
a turn: the template is rendered with a marker in place of each content, and the pieces between markers
(template) and the contents (text) are tokenized separately.
"""

from __future__ import annotations

from graftlm.errors import GraftError

IGNORE_INDEX = -100
_MARK = "\ue000graft-content-{}\ue001"  # private-use characters: no template or tokenizer treats them specially


def text_ids(tokenizer, text: str) -> list[int]:
    """Token ids of untrusted text: special-token strings in it are tokenized as the characters they are."""
    return tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def _pieces(tokenizer, messages: list[dict], add_generation_prompt: bool) -> list[tuple[str, bool]]:
    """The rendered conversation as (text, is_content) pieces, in order; joined they are the prompt."""
    marks = [_MARK.format(i) for i in range(len(messages))]
    plain = [{"role": m["role"], "content": mark} for m, mark in zip(messages, marks)]
    text = tokenizer.apply_chat_template(plain, tokenize=False, add_generation_prompt=add_generation_prompt)
    pieces, pos = [], 0
    for m, mark in zip(messages, marks):
        at = text.find(mark, pos)
        if at < 0 or text.count(mark) != 1:  # the template rewrites or repeats content: render it whole
            return _whole(tokenizer, messages, add_generation_prompt)
        pieces += [(text[pos:at], False), (m["content"], True)]
        pos = at + len(mark)
    return pieces + [(text[pos:], False)]


def _whole(tokenizer, messages: list[dict], add_generation_prompt: bool) -> list[tuple[str, bool]]:
    """A template that transforms content: safe as one piece only if no content holds a control token."""
    specials = [t for t in tokenizer.all_special_tokens + [str(t) for t in tokenizer.added_tokens_decoder.values()]
                if t]
    for i, m in enumerate(messages):
        hit = next((s for s in specials if s in m["content"]), None)
        if hit is not None:
            raise GraftError(f"messages[{i}].content contains the control token {hit!r}, which this model's "
                             "chat template cannot keep as plain text; remove it", param=f"messages.{i}.content")
    plain = [{"role": m["role"], "content": m["content"]} for m in messages]
    return [(tokenizer.apply_chat_template(plain, tokenize=False, add_generation_prompt=add_generation_prompt),
             False)]


def _template(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    return "".join(text for text, _ in _pieces(tokenizer, messages, add_generation_prompt))


def _encode_pieces(tokenizer, pieces: list[tuple[str, bool]]) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids and their character offsets in the joined pieces; content pieces with special tokens split."""
    ids, offsets, start = [], [], 0
    for text, is_content in pieces:
        if text:
            enc = tokenizer(text, add_special_tokens=False, split_special_tokens=is_content,
                            return_offsets_mapping=True)
            ids += enc["input_ids"]
            offsets += [(start + a, start + b) for a, b in enc["offset_mapping"]]
        start += len(text)
    return ids, offsets


def render_prompt(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of a chat prompt ready for generation (what the server feeds the engine)."""
    return _encode_pieces(tokenizer, _pieces(tokenizer, messages, add_generation_prompt=True))[0]


def _assistant_spans(tokenizer, messages: list[dict]) -> tuple[list[tuple[str, bool]], list[tuple[int, int]]]:
    """The full rendered conversation (as pieces) and the character spans to learn (assistant content + EOS)."""
    pieces = _pieces(tokenizer, messages, add_generation_prompt=False)
    full = "".join(text for text, _ in pieces)
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
    return pieces, spans


def encode_example(tokenizer, example: dict, max_length: int | None = None) -> dict:
    """``{"input_ids", "labels"}`` for one normalized example; truncated on the right to max_length."""
    if "text" in example:
        ids = text_ids(tokenizer, example["text"])
        if tokenizer.eos_token_id is not None:
            ids = ids + [tokenizer.eos_token_id]
        labels = list(ids)
    else:
        pieces, spans = _assistant_spans(tokenizer, example["messages"])
        ids, offsets = _encode_pieces(tokenizer, pieces)
        labels = [IGNORE_INDEX] * len(ids)
        for t, (a, b) in enumerate(offsets):
            if b > a and any(s <= a and b <= e for s, e in spans):
                labels[t] = ids[t]
    if max_length is not None and len(ids) > max_length:
        ids, labels = ids[:max_length], labels[:max_length]
    return {"input_ids": ids, "labels": labels}
