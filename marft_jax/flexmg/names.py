"""Names and places in team profiles: which role and adapter names are usable, and how a
profile is named in error messages (`where`). Shared by `profiles` and `orchestration`."""

from __future__ import annotations

import unicodedata
from typing import Any

# Names the observation layouts, the chat templates and the files of a run use for
# themselves (compared case-insensitively): a role or adapter named so would be confused
# with them (a "judge" line, a "user" turn, the "answer" field of responses.jsonl).
RESERVED_NAMES = frozenset({"system", "user", "assistant", "tool", "problem", "judge", "id",
                            "sample", "answer", "score", "correct"})
MAX_NAME_CHARS = 64


def name_problem(name: str) -> str | None:
    """Why a role or adapter name cannot be used, or None.

    Names become file and folder names (exported adapters), JSON keys and metric names and
    are written into every observation, so they must be short, visible, single-line text
    without path syntax, and not a reserved name.
    """
    if len(name) > MAX_NAME_CHARS:
        return f"is longer than {MAX_NAME_CHARS} characters"
    if name != name.strip():
        return "starts or ends with white space"
    if name in (".", "..") or any(sep in name for sep in ("/", "\\")):
        return "contains path syntax ('/', '\\', '.' or '..')"
    bad = [c for c in name if unicodedata.category(c)[0] == "C"
           or unicodedata.category(c) in ("Zl", "Zp")]
    if bad:
        return f"contains a control or invisible character (U+{ord(bad[0]):04X})"
    if name.casefold() in RESERVED_NAMES:
        return f"is reserved (reserved names: {', '.join(sorted(RESERVED_NAMES))})"
    return None


def name_key(name: str) -> str:
    """Names equal up to case and Unicode normalisation share a key."""
    return unicodedata.normalize("NFKC", name).casefold()


def where(source: str, index: int, role: Any) -> str:
    """`"<file>: profile <index> (role <role>)"`, the prefix of a profile's errors."""
    if isinstance(role, str) and role:
        return f"{source}: profile {index} (role {role!r})"
    return f"{source}: profile {index}"


def type_name(value: Any) -> str:
    """A JSON value's kind in words (\"an object\", \"a list\", ...)."""
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(value), type(value).__name__)
