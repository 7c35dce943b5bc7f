"""Structural checks for one parsed JSONL record in a known format.

``check_record(obj, fmt)`` returns ``[(field_path, message)]``; an empty list means the record can
be normalized and trained on. Field paths look like ``messages[2].role``; ``None`` is the line.
"""

from __future__ import annotations

from graftlm.data.formats import FORMATS, SHAREGPT_ROLES, detect_format

CHAT_ROLES = ("system", "user", "assistant")
CHAT_MESSAGE_KEYS = frozenset(("role", "content", "weight", "name"))
FORMAT_KEYS = {"chat": "messages", "sharegpt": "conversations", "prompt_completion": "prompt", "text": "text"}


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


def check_chat(record: dict) -> list:
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


_CHAT_ROLE_MAP = {r: r for r in CHAT_ROLES}
CHECKS = {"chat": check_chat, "sharegpt": check_sharegpt, "prompt_completion": check_prompt_completion,
          "text": check_text}


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
