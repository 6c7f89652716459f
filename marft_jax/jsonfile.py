"""Reading a user's JSON or JSON-lines file (model config, PEFT config, team profile,
dataset) with one-line errors that name the file."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from marft_jax.errors import ConfigError

_KINDS = {dict: "a JSON object", list: "a JSON array"}


def _read_text(path: Path, missing: str) -> str:
    """The file's text (`.gz`: decompressed), or a ConfigError that names the file."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rt", encoding="utf-8") as f:
                return f.read()
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found" + (f" ({missing})" if missing else "")) \
            from None
    except (OSError, UnicodeDecodeError, EOFError) as err:
        raise ConfigError(f"{path}: cannot read the file ({err})") from None


def read_json(path: str | Path, missing: str = "", top: type | tuple[type, ...] = dict) -> Any:
    """The parsed contents of a JSON file, or a ConfigError that names the file.

    Args:
        path: the file.
        missing: a hint appended to the file-not-found message, e.g. "a PEFT adapter needs
            adapter_config.json".
        top: the type(s) the top-level value must have.

    Raises:
        ConfigError: the file is missing or unreadable, is not valid JSON (with line and
            column), or its top-level value has another type.
    """
    path = Path(path)
    text = _read_text(path, missing)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: invalid JSON at line {err.lineno} column {err.colno}: "
                          f"{err.msg}") from None
    if not isinstance(data, top):
        tops = top if isinstance(top, tuple) else (top,)
        kinds = " or ".join(_KINDS.get(t, t.__name__) for t in tops)
        raise ConfigError(f"{path}: expected {kinds} at the top level")
    return data


def read_jsonl(path: str | Path, missing: str = "") -> list[tuple[int, Any]]:
    """`(line number, value)` of every non-blank line of a JSON-lines file (`.gz` too).

    Raises:
        ConfigError: the file is missing or unreadable, or a line is not valid JSON (the
            message names the file and the line).
    """
    path = Path(path)
    records = []
    for number, line in enumerate(_read_text(path, missing).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append((number, json.loads(line)))
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}: invalid JSON at line {number} column {err.colno}: "
                              f"{err.msg}") from None
    return records
