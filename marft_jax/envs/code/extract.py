"""The program in an agent's response: its last fenced code block, or the whole text."""

from __future__ import annotations

import re

# A fence opens with ``` (optionally a language tag) and closes with ``` at a line start;
# an unclosed last fence runs to the end of the response (a truncated generation).
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+.-]*)[^\n]*\n(.*?)(?:\n[ \t]*```|\Z)", re.S)
_PYTHON_TAGS = ("python", "py", "python3")


def extract_code(response: str) -> str:
    """The code a response proposes.

    The last fenced block tagged python (``` ```python ```, ``` ```py ```); else the last
    fenced block of any language; else the whole response.
    """
    blocks = [(m.group(1).lower(), m.group(2)) for m in _FENCE.finditer(response)]
    python = [code for tag, code in blocks if tag in _PYTHON_TAGS]
    if python:
        return python[-1].strip("\n")
    if blocks:
        return blocks[-1][1].strip("\n")
    return response.strip("\n")
