"""The impression (click-log) record rules of SPEC section 3.

One function, `validate_record`, holds every per-record rule so the loader, the writer and the
`validate` command agree on what a valid impression is. Uniqueness of `impression_id` is a
per-file rule and lives in `clicks2pref.data.io`.
"""

REQUIRED_FIELDS = ("impression_id", "week", "policy", "context", "suggestions", "clicks")
MAX_SUGGESTIONS = 5
ROLES = ("system", "user", "assistant")


def _kind(value) -> str:
    """A JSON-ish type name for messages ("str", "int", "bool", "null", ...)."""
    return "null" if value is None else type(value).__name__


def _is_int(value) -> bool:
    """True for real ints only: bool is a subclass of int but means something else in a log."""
    return isinstance(value, int) and not isinstance(value, bool)


def _check_nonempty_str(field: str, value) -> list[tuple[str, str]]:
    if not isinstance(value, str):
        return [(field, f"must be a string, got {_kind(value)}")]
    if not value.strip():
        return [(field, "must be a non-empty string")]
    return []


def _check_week(value) -> list[tuple[str, str]]:
    if not _is_int(value):
        return [("week", f"must be an integer >= 1, got {_kind(value)} {value!r}")]
    if value < 1:
        return [("week", f"must be >= 1, got {value}")]
    return []


def _check_context(value) -> list[tuple[str, str]]:
    if not isinstance(value, list):
        return [("context", f"must be a list of turns, got {_kind(value)}")]
    if not value:
        return [("context", "must hold at least one turn, got an empty list")]
    problems = []
    for i, turn in enumerate(value):
        if not isinstance(turn, dict):
            problems.append(("context", f"turn {i} must be an object with role and content, got {_kind(turn)}"))
            continue
        role, content = turn.get("role"), turn.get("content")
        if role not in ROLES:
            problems.append(("context", f"turn {i} role {role!r} is not one of {', '.join(ROLES)}"))
        if not isinstance(content, str) or not content.strip():
            problems.append(("context",
                             f"turn {i} content must be a non-empty string, got {_kind(content)} {content!r}"))
    last = value[-1]
    if isinstance(last, dict) and last.get("role") in ROLES and last.get("role") != "assistant":
        problems.append(("context", f"last turn must be an assistant turn, got role {last['role']!r}"))
    return problems


def _check_suggestions(value) -> list[tuple[str, str]]:
    if not isinstance(value, list):
        return [("suggestions", f"must be a list of strings, got {_kind(value)}")]
    if not 1 <= len(value) <= MAX_SUGGESTIONS:
        return [("suggestions", f"must hold 1 to {MAX_SUGGESTIONS} suggestions, got {len(value)}")]
    return [
        ("suggestions", f"suggestion {i} must be a non-empty string, got {_kind(s)} {s!r}")
        for i, s in enumerate(value)
        if not isinstance(s, str) or not s.strip()
    ]


def _check_clicks(value, suggestions) -> list[tuple[str, str]]:
    if not isinstance(value, list):
        return [("clicks", f"must be a list of 0/1 values, got {_kind(value)}")]
    problems = []
    if isinstance(suggestions, list) and len(value) != len(suggestions):
        problems.append(("clicks", f"length {len(value)} does not match {len(suggestions)} suggestions"))
    problems += [
        ("clicks", f"value at position {i} must be 0 or 1, got {_kind(c)} {c!r}")
        for i, c in enumerate(value)
        if not (_is_int(c) and c in (0, 1))
    ]
    return problems


def validate_record(record: dict) -> list[tuple[str, str]]:
    """Return every (field, problem) pair in one impression; empty when it is valid.

    Optional extra fields (topic, segment, ...) are neither required nor checked.
    """
    if not isinstance(record, dict):
        return [("record", f"must be a JSON object, got {_kind(record)}")]
    problems = [(f, "missing required field") for f in REQUIRED_FIELDS if f not in record]
    checks = {
        "impression_id": lambda v: _check_nonempty_str("impression_id", v),
        "week": _check_week,
        "policy": lambda v: _check_nonempty_str("policy", v),
        "context": _check_context,
        "suggestions": _check_suggestions,
        "clicks": lambda v: _check_clicks(v, record.get("suggestions")),
    }
    for field, check in checks.items():
        if field in record:
            problems += check(record[field])
    return problems
