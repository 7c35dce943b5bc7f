"""The JSONL dataset formats and their normalization to chat messages or raw text.

Every training example becomes either ``{"messages": [{"role", "content", "weight"}]}`` or
``{"text": str}``. Prompt/completion pairs are a one-turn chat (user → assistant), so a model
trained on them answers the same prompt sent through ``/v1/chat/completions``. A preference pair (OpenAI's
DPO format: ``input.messages``, ``preferred_output``, ``non_preferred_output``) becomes the chat that ends
with the preferred answer plus ``"rejected"``, the non-preferred answer's text (DPO trains on both; supervised
training on such a file learns the preferred answers).
"""

from __future__ import annotations

from typing import Any

from graftlm.data.tools import plain_messages

FORMATS = ("prompt_completion", "chat", "sharegpt", "text", "preference")
PREFERENCE_KEYS = ("input", "preferred_output", "non_preferred_output")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system"}


def detect_format(record: Any) -> str | None:
    """The format one JSON line is written in, or None when it matches none."""
    if not isinstance(record, dict):
        return None
    if any(k in record for k in PREFERENCE_KEYS):
        return "preference"
    if "messages" in record:
        return "chat"
    if "conversations" in record:
        return "sharegpt"
    if "prompt" in record or "completion" in record:
        return "prompt_completion"
    if "text" in record:
        return "text"
    return None


def normalize(record: dict, fmt: str) -> dict:
    """Turn a structurally valid record into ``{"messages": [...]}`` or ``{"text": ...}``."""
    if fmt == "text":
        return {"text": record["text"]}
    if fmt == "preference":
        messages = [{"role": "system" if m["role"] == "developer" else m["role"], "content": m["content"],
                     "weight": 0} for m in record["input"]["messages"]]
        chosen, rejected = record["preferred_output"][0], record["non_preferred_output"][0]
        return {"messages": messages + [{"role": "assistant", "content": chosen["content"], "weight": 1}],
                "rejected": rejected["content"]}
    if fmt == "prompt_completion":
        return {"messages": [{"role": "user", "content": record["prompt"], "weight": 0},
                             {"role": "assistant", "content": record["completion"], "weight": 1}]}
    if fmt == "sharegpt":
        messages = [{"role": SHAREGPT_ROLES[t["from"]], "content": t["value"]} for t in record["conversations"]]
    elif fmt == "chat":  # tools, tool calls and tool results are written as text, as they are served
        messages = plain_messages([dict(m) for m in record["messages"]], record.get("tools"))
    else:
        raise ValueError(f"unknown dataset format {fmt!r}; expected one of {', '.join(FORMATS)}")
    for m in messages:
        m["weight"] = int(m.get("weight", 1)) if m["role"] == "assistant" else 0
    return {"messages": messages}
