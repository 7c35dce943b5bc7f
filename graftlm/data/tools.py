"""Tool calls as text: how tools, an assistant's ``tool_calls`` and ``role: "tool"`` results are written into
the conversation, for training and serving alike (so a model fine-tuned on tool-call data answers the same
way through ``/v1/chat/completions``), and how calls are read back out of generated text.

The convention is the Hermes/Qwen one, written into plain message contents so that every chat template
renders it: the tools go in a system message inside ``<tools></tools>``; a call is
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` in the assistant's content; a tool's result is
a user turn ``<tool_response>...</tool_response>``.
"""

from __future__ import annotations

import json
import re
import uuid

TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
_CALL = re.compile(re.escape(TOOL_CALL_OPEN) + r"(.*?)" + re.escape(TOOL_CALL_CLOSE), re.S)


def tools_text(tools: list[dict]) -> str:
    """The system text that offers ``tools`` (OpenAI's [{"type": "function", "function": {...}}])."""
    specs = "\n".join(json.dumps(t.get("function", t), ensure_ascii=False, separators=(",", ":")) for t in tools)
    return (f"Tools:\n<tools>\n{specs}\n</tools>\nTo call one, answer "
            f'{TOOL_CALL_OPEN}{{"name": <name>, "arguments": <object>}}{TOOL_CALL_CLOSE}')


def call_text(call: dict) -> str:
    """One OpenAI tool call ({"function": {"name", "arguments": JSON string}}) as the model writes it."""
    fn = call.get("function") or {}
    args = fn.get("arguments")
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            pass  # (the validator refuses it in training data; served as the client wrote it)
    return TOOL_CALL_OPEN + json.dumps({"name": fn.get("name"), "arguments": args}, ensure_ascii=False) + \
        TOOL_CALL_CLOSE


def plain_messages(messages: list[dict], tools: list[dict] | None) -> list[dict]:
    """Messages with tools, tool calls and tool results written as text: each {"role", "content", ...} with a
    string content and role system, user or assistant (other keys, e.g. weight, are kept)."""
    out = []
    for m in messages:
        m = dict(m)
        calls = m.pop("tool_calls", None) or []
        m.pop("tool_call_id", None)
        if m["role"] == "tool":
            m["role"], m["content"] = "user", f"<tool_response>\n{m.get('content') or ''}\n</tool_response>"
        elif calls:
            m["content"] = (m.get("content") or "") + "".join(call_text(c) for c in calls)
        m["content"] = m.get("content") or ""
        out.append(m)
    if tools:
        offer = tools_text(tools)
        if out and out[0]["role"] == "system":
            out[0] = out[0] | {"content": f"{out[0]['content']}\n\n{offer}" if out[0]["content"] else offer}
        else:
            out.insert(0, {"role": "system", "content": offer})
    return out


def partial_open_tag(text: str) -> int:
    """How many characters at the end of ``text`` could be the start of ``<tool_call>`` (held back while
    streaming, so a call's tag never leaks out as content)."""
    for k in range(min(len(TOOL_CALL_OPEN) - 1, len(text)), 0, -1):
        if TOOL_CALL_OPEN.startswith(text[-k:]):
            return k
    return 0


def parse_tool_calls(text: str, names: set[str]) -> tuple[str | None, list[dict]]:
    """(content before the first call or None, OpenAI tool_calls) read from generated text. A block that is
    not JSON of a known function's name and an arguments object is left in the content as text."""
    calls, first = [], None
    for match in _CALL.finditer(text):
        try:
            obj = json.loads(match.group(1))
        except json.JSONDecodeError:
            continue
        if not (isinstance(obj, dict) and obj.get("name") in names and isinstance(obj.get("arguments", {}), dict)):
            continue
        first = match.start() if first is None else first
        calls.append({"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                      "function": {"name": obj["name"],
                                   "arguments": json.dumps(obj.get("arguments", {}), ensure_ascii=False)}})
    if not calls:
        return text, []
    content = text[:first].strip()
    return content or None, calls
