"""Structural checks for one parsed JSONL record in a known format.

``check_record(obj, fmt)`` returns ``[(field_path, message)]``; an empty list means the record can
be normalized and trained on. Field paths look like ``messages[2].role``; ``None`` is the line.
"""

from __future__ import annotations

import json

from graftlm.data.formats import FORMATS, PREFERENCE_KEYS, SHAREGPT_ROLES, detect_format

CHAT_ROLES = ("system", "user", "assistant")
CHAT_MESSAGE_KEYS = frozenset(("role", "content", "weight", "name"))
FORMAT_KEYS = {"chat": "messages", "sharegpt": "conversations", "prompt_completion": "prompt", "text": "text",
               "preference": "preferred_output"}
PREFERENCE_INPUT_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def json_type(value) -> str:
    """The JSON name of a parsed value's type, for messages users understand."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", list: "array", dict: "object"}.get(type(value), type(value).__name__)


def _text(value, field: str, errors: list) -> None:
    if type(value) is not str:
        errors.append((field, f"must be a string, got {json_type(value)}"))
    elif not value.strip():
        errors.append((field, "is empty"))


def _turns(items, field: str, role_key: str, text_key: str, roles: dict, chat: bool, errors: list) -> list:
    """Check each turn; return the normalized roles (None where a role is invalid)."""
    if type(items) is not list:
        errors.append((field, f"must be an array of {'messages' if chat else 'turns'}, got {json_type(items)}"))
        return []
    if not items:
        errors.append((field, "is empty; a conversation needs at least a user and an assistant turn"))
        return []
    out = []
    for i, m in enumerate(items):
        at = f"{field}[{i}]"
        if type(m) is not dict:
            errors.append((at, f"must be an object with {role_key!r} and {text_key!r}, got {json_type(m)}"))
            out.append(None)
            continue
        role = m.get(role_key)
        if role is None and role_key not in m:
            errors.append((f"{at}.{role_key}", "is missing"))
        elif type(role) is not str or role not in roles:
            errors.append((f"{at}.{role_key}", f"must be one of {', '.join(sorted(set(roles)))}, got {role!r}"))
            role = None
        else:
            role = roles[role]
        out.append(role)
        if text_key in m:
            _text(m[text_key], f"{at}.{text_key}", errors)
        else:
            errors.append((f"{at}.{text_key}", "is missing"))
        if not chat:
            continue
        if len(m) > 2 and not CHAT_MESSAGE_KEYS.issuperset(m):
            for key in m:
                if key not in CHAT_MESSAGE_KEYS:
                    errors.append((f"{at}.{key}", "unknown field; a message has role, content and optionally weight, name"))
        if "weight" in m:
            w = m["weight"]
            if type(w) is not int or w not in (0, 1):
                errors.append((f"{at}.weight", f"must be 0 or 1, got {w!r}"))
            elif role is not None and role != "assistant":
                errors.append((f"{at}.weight", "is only allowed on assistant messages"))
    return out


def _order(roles: list, field: str, role_key: str, errors: list) -> None:
    """System first (optional), then user/assistant alternating, starting with user, ending with assistant.

    role_key names the role field in errors: ``role`` for chat messages, ``from`` for ShareGPT turns.
    """
    if not roles or None in roles:
        return  # a bad role was already reported; order errors would only repeat it
    start = 1 if roles[0] == "system" else 0
    previous = None
    for i in range(start, len(roles)):
        role = roles[i]
        if role == "system":
            errors.append((f"{field}[{i}].{role_key}", "a system message is only allowed as the first message"))
        elif previous is None and role != "user":
            errors.append((f"{field}[{i}].{role_key}", "the conversation must start with a user message (after an optional system message)"))
        elif role == previous:
            errors.append((f"{field}[{i}].{role_key}", f"two {role} messages in a row; user and assistant must alternate"))
        previous = role
    if "assistant" not in roles:
        errors.append((field, "has no assistant message; there is nothing to learn"))
    elif roles[-1] == "user":  # a trailing system message was reported above
        errors.append((f"{field}[{len(roles) - 1}].{role_key}", "the conversation ends with a user message; the last message must be from the assistant"))


def _uses_tools(record: dict) -> bool:
    messages = record.get("messages")
    return "tools" in record or (type(messages) is list and any(
        type(m) is dict and (m.get("role") == "tool" or "tool_calls" in m or "tool_call_id" in m) for m in messages))


def _check_tools_field(tools, errors: list) -> set[str]:
    """OpenAI's tools: [{"type": "function", "function": {"name", "description", "parameters"}}]; their names."""
    names: set[str] = set()
    if type(tools) is not list:
        errors.append(("tools", f"must be an array of tools, got {json_type(tools)}"))
        return names
    for i, t in enumerate(tools):
        fn = t.get("function") if type(t) is dict else None
        if type(t) is not dict or t.get("type") != "function" or type(fn) is not dict:
            errors.append((f"tools[{i}]", 'must be {"type": "function", "function": {"name", "parameters"}}'))
        elif type(fn.get("name")) is not str or not fn["name"]:
            errors.append((f"tools[{i}].function.name", "must be a non-empty string"))
        elif "parameters" in fn and type(fn["parameters"]) is not dict:
            errors.append((f"tools[{i}].function.parameters", "must be a JSON schema object"))
        else:
            names.add(fn["name"])
    return names


def _check_call(call, at: str, names: set[str] | None, errors: list) -> None:
    fn = call.get("function") if type(call) is dict else None
    if type(fn) is not dict:
        errors.append((at, 'must be {"type": "function", "function": {"name", "arguments"}}'))
        return
    name = fn.get("name")
    if type(name) is not str or not name:
        errors.append((f"{at}.function.name", "must be a non-empty string"))
    elif names is not None and name not in names:
        errors.append((f"{at}.function.name", f"{name!r} is not among the line's tools ({', '.join(sorted(names))})"))
    args = fn.get("arguments")
    if type(args) is str:
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            errors.append((f"{at}.function.arguments", "is not valid JSON"))
            return
    if type(args) is not dict:
        errors.append((f"{at}.function.arguments", f"must be a JSON object (or its text), got {json_type(args)}"))


TOOL_MESSAGE_KEYS = {"system": {"role", "content", "name"}, "user": {"role", "content", "name"},
                     "assistant": {"role", "content", "weight", "name", "tool_calls"},
                     "tool": {"role", "content", "tool_call_id", "name"}}


def check_tool_chat(record: dict) -> list:
    """A chat line with tools (OpenAI's format): ``tools`` on the line, ``tool_calls`` on assistant messages,
    ``role: "tool"`` results after them; the assistant's calls are learned like its text."""
    errors: list = []
    names = _check_tools_field(record["tools"], errors) if "tools" in record else None
    messages = record["messages"]
    if type(messages) is not list or not messages:
        return errors + [("messages", "must be a non-empty array of messages")]
    previous, seen_assistant = None, False
    for i, m in enumerate(messages):
        at = f"messages[{i}]"
        if type(m) is not dict:
            errors.append((at, f"must be an object with 'role' and 'content', got {json_type(m)}"))
            return errors
        role = m.get("role")
        if role not in TOOL_MESSAGE_KEYS:
            errors.append((f"{at}.role", f"must be one of assistant, system, tool, user, got {role!r}"))
            return errors
        for key in m:
            if key not in TOOL_MESSAGE_KEYS[role]:
                errors.append((f"{at}.{key}", f"is not a field of a {role} message"))
        calls = m.get("tool_calls")
        if calls is not None:
            if type(calls) is not list or not calls:
                errors.append((f"{at}.tool_calls", "must be a non-empty array of calls"))
            else:
                for k, call in enumerate(calls):
                    _check_call(call, f"{at}.tool_calls[{k}]", names, errors)
            if m.get("content") is not None and type(m["content"]) is not str:
                errors.append((f"{at}.content", f"must be a string or null, got {json_type(m['content'])}"))
        elif role == "tool":
            if type(m.get("content")) is not str:
                errors.append((f"{at}.content", "must be a string (the tool's result)"))
        else:
            _text(m.get("content"), f"{at}.content", errors) if "content" in m else errors.append(
                (f"{at}.content", "is missing"))
        if "weight" in m and m["weight"] not in (0, 1):
            errors.append((f"{at}.weight", f"must be 0 or 1, got {m['weight']!r}"))
        if role == "system":
            if i:
                errors.append((f"{at}.role", "a system message is only allowed as the first message"))
        elif role == "tool":
            if previous not in ("calls", "tool"):
                errors.append((f"{at}.role", "a tool message must follow an assistant message with tool_calls"))
        elif role == "user":
            if previous == "user":
                errors.append((f"{at}.role", "two user messages in a row; user and assistant must alternate"))
        elif previous not in ("user", "tool"):
            errors.append((f"{at}.role", "an assistant message must follow a user or tool message"))
        if previous == "calls" and role != "tool":
            errors.append((f"{at}.role", "the assistant's tool_calls must be answered by tool messages"))
        seen_assistant = seen_assistant or role == "assistant"
        previous = "calls" if calls else role if role != "system" else None
    if not seen_assistant:
        errors.append(("messages", "has no assistant message; there is nothing to learn"))
    elif previous not in ("assistant", "calls"):
        errors.append((f"messages[{len(messages) - 1}].role", "the last message must be from the assistant"))
    return errors


def check_chat(record: dict) -> list:
    if _uses_tools(record):
        return check_tool_chat(record)
    messages = record["messages"]
    errors: list = []
    roles = _turns(messages, "messages", "role", "content", _CHAT_ROLE_MAP, True, errors)
    _order(roles, "messages", "role", errors)
    if roles and "assistant" in roles and not errors:
        if all(m.get("weight", 1) == 0 for m in messages if m["role"] == "assistant"):
            errors.append(("messages", "every assistant message has weight 0; there is nothing to learn"))
    return errors


def check_sharegpt(record: dict) -> list:
    errors: list = []
    roles = _turns(record["conversations"], "conversations", "from", "value", SHAREGPT_ROLES, False, errors)
    _order(roles, "conversations", "from", errors)
    return errors


def check_prompt_completion(record: dict) -> list:
    errors: list = []
    others = [k for k in record if k not in ("prompt", "completion")]
    for key in ("prompt", "completion"):
        if key in record:
            _text(record[key], key, errors)
        elif others:  # e.g. "response" written for "completion": name what the line has instead
            errors.append((key, f"is missing; the line has {', '.join(map(repr, others))} instead, which is not "
                                f"a field of this format (prompt/completion lines have \"prompt\" and \"completion\")"))
        else:
            errors.append((key, "is missing"))
    return errors


def check_text(record: dict) -> list:
    errors: list = []
    _text(record["text"], "text", errors)
    return errors


def _one_assistant_output(value, field: str, errors: list) -> None:
    """A DPO output: an array of exactly one assistant message with text content."""
    if type(value) is not list:
        errors.append((field, f"must be an array with one assistant message, got {json_type(value)}"))
        return
    if len(value) != 1:
        errors.append((field, f"must hold exactly one assistant message, got {len(value)}"))
        return
    m = value[0]
    at = f"{field}[0]"
    if type(m) is not dict:
        errors.append((at, f"must be an object with 'role' and 'content', got {json_type(m)}"))
        return
    if m.get("role") != "assistant":
        errors.append((f"{at}.role", f"must be assistant, got {m.get('role')!r}" if "role" in m else "is missing"))
    if "content" in m:
        _text(m["content"], f"{at}.content", errors)
    else:
        errors.append((f"{at}.content", "is missing"))
    for key in m:
        if key not in ("role", "content"):
            errors.append((f"{at}.{key}", "unknown field; an output message has role and content"))


def check_preference(record: dict) -> list:
    """OpenAI's DPO line: {"input": {"messages": [...]}, "preferred_output": [assistant], "non_preferred_output":
    [assistant]}; the input conversation ends with a user message."""
    errors: list = []
    for key in record:
        if key not in PREFERENCE_KEYS:
            errors.append((key, "unknown field; a preference line has input, preferred_output, non_preferred_output"))
    inp = record.get("input")
    if "input" not in record:
        errors.append(("input", "is missing"))
    elif type(inp) is not dict:
        errors.append(("input", f"must be an object with 'messages', got {json_type(inp)}"))
    elif "messages" not in inp:
        errors.append(("input.messages", "is missing"))
    else:
        for key in inp:
            if key not in ("messages", "tools", "parallel_tool_calls"):
                errors.append((f"input.{key}", "unknown field; input has messages"))
        if inp.get("tools"):
            errors.append(("input.tools", "tool definitions are not supported in preference data yet"))
        roles = _turns(inp["messages"], "input.messages", "role", "content", PREFERENCE_INPUT_ROLES, True, errors)
        if roles and None not in roles:
            if roles[-1] != "user":
                errors.append((f"input.messages[{len(roles) - 1}].role",
                               "the input must end with a user message (the outputs answer it)"))
            else:
                _order(roles + ["assistant"], "input.messages", "role", errors)  # the outputs answer the last turn
    for key in ("preferred_output", "non_preferred_output"):
        if key in record:
            _one_assistant_output(record[key], key, errors)
        else:
            errors.append((key, "is missing"))
    if not errors and record["preferred_output"][0]["content"] == record["non_preferred_output"][0]["content"]:
        errors.append(("non_preferred_output[0].content", "is the same as the preferred output; nothing to learn"))
    return errors


_CHAT_ROLE_MAP = {r: r for r in CHAT_ROLES}
CHECKS = {"chat": check_chat, "sharegpt": check_sharegpt, "prompt_completion": check_prompt_completion,
          "text": check_text, "preference": check_preference}


def fast_chat_ok(record: dict) -> bool:
    """True for the common valid chat line: plain messages, [system] user assistant ... assistant.

    The validator's hot path; only True is trusted, on False ``check_chat`` says what is wrong.
    """
    messages = record.get("messages")
    if type(messages) is not list or len(messages) < 2:
        return False
    expected, first = "user", True
    for m in messages:
        if type(m) is not dict or len(m) != 2:
            return False
        content = m.get("content")
        if type(content) is not str or not content or content.isspace():
            return False
        role = m.get("role")
        if role == expected:
            expected = "assistant" if role == "user" else "user"
        elif not (first and role == "system"):
            return False
        first = False
    return expected == "user"


def check_record(obj, fmt: str | None) -> list:
    """Problems of one parsed line for a file in format fmt (also: not an object, another format)."""
    if type(obj) is not dict:
        return [(None, f"line must be a JSON object, got {json_type(obj)}")]
    line_fmt = detect_format(obj)
    if line_fmt is None:
        keys = ", ".join(repr(k) for k in list(obj)[:5]) or "none"
        expected = f"expected {FORMAT_KEYS[fmt]!r} for a {fmt} file" if fmt else "expected one of"
        return [(None, f"no known dataset format: {expected} (messages, conversations, prompt/completion, text); "
                       f"keys found: {keys}")]
    if line_fmt != fmt:
        return [(FORMAT_KEYS[line_fmt] if FORMAT_KEYS[line_fmt] in obj else "completion",
                 f"mixed formats: this line is {line_fmt} but the file is {fmt}")]
    return CHECKS[fmt](obj)


assert set(CHECKS) == set(FORMATS)
