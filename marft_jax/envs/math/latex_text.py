"""Small string utilities for LaTeX answers: brace matching, command arguments, top-level splits.

All functions work on plain Python strings and never raise on unbalanced input: they report
"no match" (``None``) instead, so callers can fall back to another reading of the text.
"""

from __future__ import annotations

_OPENERS = "([{"
_CLOSERS = ")]}"


def closing_brace(text: str, open_index: int) -> int | None:
    """Index of the ``}`` that closes the ``{`` at ``open_index``, or None if unbalanced.

    Escaped braces (``\\{``, ``\\}``) do not count.

    Args:
        text: the string to scan.
        open_index: index of an opening ``{`` in ``text``.

    Returns:
        The index of the matching ``}``, or None when ``text[open_index]`` is not ``{`` or the
        brace is never closed.
    """
    if open_index >= len(text) or text[open_index] != "{":
        return None
    depth = 0
    index = open_index
    while index < len(text):
        char = text[index]
        if char == "\\":
            index += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return index
        index += 1
    return None


def command_argument(text: str, start: int) -> tuple[str, int] | None:
    """The argument of a LaTeX command whose name ends just before ``start``.

    A braced group gives its content (``\\frac{12}{3}`` -> ``12``); otherwise the argument is
    one character or one command (``\\frac12`` -> ``1``, ``\\sqrt\\pi`` -> ``\\pi``), as in
    TeX. Leading spaces are skipped.

    Args:
        text: the string.
        start: index just after the command name.

    Returns:
        ``(argument, end)`` with ``end`` the index after the argument, or None if there is none.
    """
    index = start
    while index < len(text) and text[index] == " ":
        index += 1
    if index >= len(text):
        return None
    if text[index] == "{":
        close = closing_brace(text, index)
        if close is None:
            return None
        return text[index + 1:close], close + 1
    if text[index] == "\\":
        end = index + 1
        while end < len(text) and text[end].isalpha():
            end += 1
        if end == index + 1:
            end = min(index + 2, len(text))
        return text[index:end], end
    if text[index] in "}])":
        return None
    return text[index], index + 1


def find_commands(text: str, name: str) -> list[int]:
    """Start indices of ``\\name`` in ``text`` where the name is not part of a longer command."""
    token = "\\" + name
    found = []
    index = text.find(token)
    while index >= 0:
        end = index + len(token)
        if end >= len(text) or not text[end].isalpha():
            found.append(index)
        index = text.find(token, index + 1)
    return found


def unwrap_command(text: str, name: str, *, keep_content: bool = True) -> str:
    """Replace every ``\\name{content}`` by ``content`` (or by nothing).

    Args:
        text: the string.
        name: command name without backslash, e.g. ``"text"``.
        keep_content: keep the braced content (True) or drop the whole command (False).

    Returns:
        The rewritten string; an unbalanced occurrence is left as it is.
    """
    for start in reversed(find_commands(text, name)):
        brace = start + len(name) + 1
        while brace < len(text) and text[brace] == " ":
            brace += 1
        close = closing_brace(text, brace)
        if close is None:
            continue
        content = text[brace + 1:close] if keep_content else ""
        text = text[:start] + content + text[close + 1:]
    return text


def split_top_level(text: str, separator: str) -> list[str]:
    """Split ``text`` at ``separator`` where no bracket of any kind is open.

    Brackets ``( [ {`` and ``) ] }`` are counted together, so a half-open interval such as
    ``[0,1)`` nests correctly. Escaped braces count like braces.

    Returns:
        The pieces (one piece, the whole text, when the separator never occurs at depth 0).
    """
    pieces = []
    depth = 0
    last = 0
    index = 0
    while index < len(text):
        char = text[index]
        if char in _OPENERS:
            depth += 1
        elif char in _CLOSERS:
            depth -= 1
        elif depth == 0 and text.startswith(separator, index):
            pieces.append(text[last:index])
            index += len(separator)
            last = index
            continue
        index += 1
    pieces.append(text[last:])
    return pieces


def wrapped_by_brackets(text: str) -> bool:
    """True if the first and last characters are brackets that enclose the whole text.

    The two brackets need not be of the same kind (``[0,1)`` is wrapped); ``(1)+(2)`` is not.
    """
    if len(text) < 2 or text[0] not in _OPENERS or text[-1] not in _CLOSERS:
        return False
    depth = 0
    for char in text[1:-1]:
        if char in _OPENERS:
            depth += 1
        elif char in _CLOSERS:
            depth -= 1
            if depth < 0:
                return False
    return depth == 0
