"""Names and places in team profiles: which role and adapter names are usable
(`name_problem`, `validate_roles`), and how a profile is named in error messages
(`where`). Shared by `profiles` and `orchestration`."""

from __future__ import annotations

import unicodedata
from typing import Any

from marft_jax.errors import ConfigError

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


def validate_roles(profiles: tuple, source: str) -> None:
    """Usable names (`name_problem`), unique roles (also up to case and Unicode
    normalisation), adapter names that differ in more than that, an adapter on one base
    model, and `depends_on` naming only other, known roles, each once."""
    first: dict[str, int] = {}
    keys: dict[str, int] = {}
    adapters: dict[str, str] = {}
    models: dict[str, tuple[int, str | None]] = {}  # adapter -> (first profile, its model)
    for index, profile in enumerate(profiles):
        at = where(source, index, profile.role)
        for field, name in (("role", profile.role), ("adapter", profile.adapter)):
            problem = name_problem(name)
            if problem:
                raise ConfigError(f"{at}: field {field!r} ({name!r}) {problem}")
        if profile.role in first:
            raise ConfigError(
                f"{at}: field 'role' repeats the role of "
                f"profile {first[profile.role]}; roles must be unique")
        key = name_key(profile.role)
        if key in keys:
            raise ConfigError(
                f"{at}: field 'role' equals the role of profile {keys[key]} up to case or "
                "Unicode normalisation; roles must be distinct")
        seen = adapters.setdefault(name_key(profile.adapter), profile.adapter)
        if seen != profile.adapter:
            raise ConfigError(
                f"{at}: field 'adapter' ({profile.adapter!r}) equals adapter {seen!r} up "
                "to case or Unicode normalisation (exported folders would clash)")
        first[profile.role] = index
        keys[key] = index
        owner = models.setdefault(profile.adapter, (index, profile.model))
        if owner[1] != profile.model:
            raise ConfigError(
                f"{at}: field 'model' ({profile.model!r}) differs from that of profile "
                f"{owner[0]} ({owner[1]!r}), which uses the same adapter {profile.adapter!r}; "
                "an adapter lives on one base model")
    for index, profile in enumerate(profiles):
        at = where(source, index, profile.role)
        for k, dep in enumerate(profile.depends_on or ()):
            if dep == profile.role:
                raise ConfigError(f"{at}: field 'depends_on' names the role itself")
            if dep not in first:
                raise ConfigError(
                    f"{at}: field 'depends_on' names unknown role {dep!r} "
                    f"(roles: {', '.join(first)})")
            if dep in profile.depends_on[:k]:
                raise ConfigError(f"{at}: field 'depends_on' names {dep!r} twice")
