"""The program in an agent's response: its last fenced code block, or the whole text."""

from __future__ import annotations

import re

# A fence opens with ``` (optionally a language tag) and closes with ``` at a line start;
# an unclosed last fence runs to the end of the response (a truncated generation).
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+.-]*)[^\n]*\n(.*?)(?:\n[ \t]*```|\Z)", re.S)
_PYTHON_TAGS = ("python", "py", "python3")


# Lines that show the text before a lone closing fence is code, not prose.
_CODE_LINE = re.compile(r"^(def |class |import |from \S+ import |@)", re.M)


def _opened_before(response: str) -> bool:
    """Whether the response starts inside a code block: code, then a bare ``` line that
    closes it (the model continued a block it took as opened), with an odd fence count."""
    fences = [line.strip() for line in response.split("\n") if line.lstrip().startswith("```")]
    if len(fences) % 2 == 0 or fences[0] != "```":
        return False
    head = response.split("```", 1)[0]
    return bool(_CODE_LINE.search(head))


def extract_code(response: str) -> str:
    """The code a response proposes.

    The last fenced block tagged python (``` ```python ```, ``` ```py ```); else the last
    fenced block of any language; else the whole response. A response that starts with
    code and closes it with a bare ``` line (no opening fence) counts as opening a block at
    its start.
    """
    if _opened_before(response):
        response = "```\n" + response
    blocks = [(m.group(1).lower(), m.group(2)) for m in _FENCE.finditer(response)]
    python = [code for tag, code in blocks if tag in _PYTHON_TAGS]
    if python:
        return python[-1].strip("\n")
    if blocks:
        return blocks[-1][1].strip("\n")
    return response.strip("\n")
