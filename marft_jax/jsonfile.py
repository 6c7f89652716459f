"""Reading a user's JSON file (model config, PEFT config, team profile) with one-line errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from marft_jax.errors import ConfigError

_KINDS = {dict: "a JSON object", list: "a JSON array"}


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
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found" + (f" ({missing})" if missing else "")) \
            from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read the file ({err})") from None
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
