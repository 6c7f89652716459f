"""Normalisation of answer strings, and exact reading of plain numbers.

``normalize_answer`` maps the many ways of writing one answer to one string: boxes,
math-mode dollars, ``\\left``/``\\right``, spacing commands, ``\\dfrac``/``\\tfrac``, degree signs,
percent signs, ``\\text{...}`` units and unit words after a number, ``x = `` prefixes,
thousands commas, base subscripts (``52_8`` -> ``52``: the digits as written),
``\\frac12``/``\\sqrt2`` shorthands, trailing full stops and all spaces
(except the one that separates a command from a following letter: ``\\sec x``).

``parse_number`` reads a normalised answer that is a plain number, a fraction of two numbers
or a mixed number as an exact ``Fraction``; everything else is left to the symbolic path.
"""

from __future__ import annotations

import re
from fractions import Fraction

from marft_jax.envs.math.latex_text import command_argument, find_commands, unwrap_command
from marft_jax.envs.math.number_words import parse_number_words

_SIZING_RE = re.compile(
    r"\\(?:left|right|bigl|bigr|Bigl|Bigr|biggl|biggr|big|Big|bigg|Bigg|displaystyle|"
    r"textstyle)(?![a-zA-Z])")
_SPACING_RE = re.compile(r"(?<!\\)\\[,!;:> ]|\\quad(?![a-zA-Z])|\\qquad(?![a-zA-Z])|~")
_DEGREE_RE = re.compile(
    r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ(?![a-zA-Z])|\\degree(?![a-zA-Z])|°"
    r"|(?<!\s)\s+degrees?\b")
# `(?<!\s)` before a leading `\s*` / `\s+`: a match starts at the beginning of a run of
# spaces, not at every position inside it (quadratic backtracking on long runs).
_PERCENT_RE = re.compile(r"\\%|%|(?<!\s)\s*\bpercent\b")
_TEXT_COMMANDS = ("text", "textrm", "textbf", "textit", "textnormal", "mbox", "mathrm",
                  "mathbf", "mathit", "boldsymbol", "operatorname")
_TRAILING_TEXT_RE = re.compile(
    r"^(?P<body>.*\S)\s*\\(?:text|textrm|textnormal|mbox|mathrm)\s*\{[^{}]*\}"
    r"(?:\s*\^\s*(?:\{\s*\d\s*\}|\d))?\s*\.?$", re.DOTALL)
_AND_RE = re.compile(r"\\text\s*\{\s*and\s*\}|(?<!\s)\s+and\s+")
_NUMBER_TEXT = r"[-+]?(?:\d[\d,]*(?:\.\d+)?|\.\d+)"
_UNIT_WORD_RE = re.compile(
    rf"^(?P<number>{_NUMBER_TEXT})(?P<unit>(?:\s+[a-zA-Z]{{2,}}|\s*[^\x00-\x7f]+)"
    r"(?:[\s.]+(?:[a-zA-Z]+|[^\x00-\x7f]+))*)\.?$")
_NOT_UNITS = frozenset({"pi", "sqrt", "inf", "infty", "infinity", "i", "e"})
_LHS_RE = re.compile(r"^\s*(?:[a-zA-Z]|\\[a-zA-Z]+)(?:_\{?\w+\}?)?\s*(?:=|\\in(?![a-zA-Z]))\s*")
_THOUSANDS_RE = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_BASE_RE = re.compile(r"(\d+(?:\.\d+)?)_\{?\d+\}?")
_BRACED_THOUSANDS_RE = re.compile(r"\{(\d{1,3}(?:,\d{3})+)\}")
_INFINITY_RE = re.compile(r"\\inf(?:ty)?(?![a-zA-Z])|\binfinity\b|\binf\b")
_SLASH_FRACTION_RE = re.compile(r"(-?)(\d+)/(\d+)")
_LEADING_POINT_RE = re.compile(r"(?<![\d}])\.(\d)")
_SPACE_RE = re.compile(r"\s+")
_MATH_DELIMITERS_RE = re.compile(r"(?<!\\)\\[()\[\]]")
# 6.02 \times 10^{23}, 6.02\cdot10^23, 6.02 × 10^-5 (after spaces are removed).
_SCIENTIFIC_RE = re.compile(
    r"([-+]?(?:\d+(?:\.\d*)?|\.\d+))(?:\\times|\\cdot|×|\*)10\^(?:\{([-+]?\d+)\}|([-+]?\d+))")
_COMMAND_END_RE = re.compile(r"\\[a-zA-Z]+$")

_PLAIN_RE = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d{1,3})?")
_FRAC_RE = re.compile(rf"([-+]?)\\frac\{{({_PLAIN_RE.pattern})\}}\{{({_PLAIN_RE.pattern})\}}")
_SLASH_RE = re.compile(rf"({_PLAIN_RE.pattern})/({_PLAIN_RE.pattern})")
_MIXED_RE = re.compile(r"([-+]?)(\d+)\\frac\{(\d+)\}\{(\d+)\}")


def has_percent(text: str) -> bool:
    """True if the answer is marked as a percentage (``%``, ``\\%`` or the word "percent")."""
    return bool(_PERCENT_RE.search(text))


def normalize_answer(text: str) -> str:
    """The canonical string form of an answer (see the module docstring).

    Normalisation is idempotent: ``normalize_answer(normalize_answer(s)) ==
    normalize_answer(s)``.

    Args:
        text: a raw answer, e.g. the content of a box or a dataset field.

    Returns:
        The normalised answer (possibly empty).
    """
    s = text.replace("\n", " ").strip()
    words = parse_number_words(s)
    if words is not None:  # "eighteen" -> "18"
        return str(words)
    s = s.replace("\\$", "").replace("$", "")
    s = _MATH_DELIMITERS_RE.sub("", s)  # \( 42 \), \[ 42 \]
    s = s.replace("{,}", ",").replace("\\{", "{").replace("\\}", "}")
    s = _BRACED_THOUSANDS_RE.sub(lambda match: "{" + match.group(1).replace(",", "") + "}", s)
    s = _SPACING_RE.sub(" ", s)
    s = _SIZING_RE.sub("", s)
    s = re.sub(r"\\[dtc]frac(?![a-zA-Z])", r"\\frac", s)
    s = unwrap_command(s, "phantom", keep_content=False)
    s = unwrap_command(unwrap_command(s, "boxed"), "fbox")
    s = _DEGREE_RE.sub("", s)
    s = _PERCENT_RE.sub("", s)
    s = _AND_RE.sub(",", s)
    s = _strip_text(s)
    s = _INFINITY_RE.sub(r"\\infty", s)
    s = _LHS_RE.sub("", s, count=1) if s.count("=") <= 1 else s
    s = _strip_unit_words(s.strip())
    s = _remove_spaces(s)
    s = _SCIENTIFIC_RE.sub(lambda m: f"{m.group(1)}e{m.group(2) or m.group(3)}", s)
    s = re.sub(r",+", ",", s).strip(",")
    if _THOUSANDS_RE.fullmatch(s):
        s = s.replace(",", "")
    base = _BASE_RE.fullmatch(s)
    if base:
        s = base.group(1)
    s = _fix_shorthand_arguments(s, "frac", 2)
    s = _fix_shorthand_arguments(s, "sqrt", 1)
    s = _LEADING_POINT_RE.sub(r"0.\1", s)
    slash = _SLASH_FRACTION_RE.fullmatch(s)
    if slash:
        s = f"{slash.group(1)}\\frac{{{slash.group(2)}}}{{{slash.group(3)}}}"
    s = s.rstrip(".").rstrip("\\").rstrip(".")
    s = _strip_wrapping_braces(s)
    if s.startswith("+") and len(s) > 1:
        s = s[1:]
    return s


def _strip_text(s: str) -> str:
    """Drop a trailing ``\\text{unit}`` after a quantity, then unwrap the other text commands."""
    while True:
        match = _TRAILING_TEXT_RE.match(s)
        if not match or not re.search(r"[\d}]", match.group("body")):
            break
        s = match.group("body")
    for name in _TEXT_COMMANDS:
        s = unwrap_command(s, name)
    return s


def _strip_unit_words(s: str) -> str:
    """``"18 dollars"`` -> ``"18"``, ``"18个"`` -> ``"18"``; ``"3ab"`` and ``"2 pi"`` stay."""
    match = _UNIT_WORD_RE.match(s)
    if match and match.group("unit").split()[0].strip(".").lower() not in _NOT_UNITS:
        return match.group("number")
    return s


def _remove_spaces(s: str) -> str:
    """Remove whitespace, keeping one space between a command and a following letter."""
    def replace(match: re.Match) -> str:
        before = s[:match.start()]
        after = s[match.end():match.end() + 1]
        return " " if after.isalpha() and _COMMAND_END_RE.search(before) else ""

    return _SPACE_RE.sub(replace, s)


def _fix_shorthand_arguments(s: str, name: str, count: int) -> str:
    """Brace the arguments of ``\\frac12`` / ``\\sqrt2`` (``\\frac{1}{2}``, ``\\sqrt{2}``)."""
    for start in reversed(find_commands(s, name)):
        index = start + len(name) + 1
        if name == "sqrt" and s.startswith("[", index):
            close = s.find("]", index)
            if close < 0:
                continue
            index = close + 1
        head = s[:index]
        if name == "sqrt" and s[index:index + 1].isdigit():  # \sqrt13 is read as \sqrt{13}
            end = index
            while end < len(s) and s[end].isdigit():
                end += 1
            s = head + f"{{{s[index:end]}}}" + s[end:]
            continue
        arguments = []
        for _ in range(count):
            argument = command_argument(s, index)
            if argument is None:
                break
            arguments.append(argument[0])
            index = argument[1]
        if len(arguments) == count:
            s = head + "".join(f"{{{argument}}}" for argument in arguments) + s[index:]
    return s


def _strip_wrapping_braces(s: str) -> str:
    """``{x+1}`` -> ``x+1`` while one brace group encloses the whole string."""
    while len(s) >= 2 and s[0] == "{" and s[-1] == "}":
        depth = 0
        for index, char in enumerate(s):
            depth += char == "{"
            depth -= char == "}"
            if depth == 0 and index < len(s) - 1:
                return s
        s = s[1:-1]
    return s


def parse_number(text: str) -> Fraction | None:
    """Read a normalised answer as an exact number, or None if it is not a plain number.

    Accepts ``12``, ``-0.5``, ``1e-3``, ``\\frac{3}{4}``, ``-\\frac{3}{4}``, ``3/4`` and the mixed
    number ``2\\frac{1}{2}`` (= 5/2, the convention of the MATH answers).
    """
    try:
        if _PLAIN_RE.fullmatch(text):
            return Fraction(text)
        match = _FRAC_RE.fullmatch(text)
        if match:
            value = Fraction(match.group(2)) / Fraction(match.group(3))
            return -value if match.group(1) == "-" else value
        match = _SLASH_RE.fullmatch(text)
        if match:
            return Fraction(match.group(1)) / Fraction(match.group(2))
        match = _MIXED_RE.fullmatch(text)
        if match:
            value = int(match.group(2)) + Fraction(int(match.group(3)), int(match.group(4)))
            return -value if match.group(1) == "-" else value
    except (ValueError, ZeroDivisionError, OverflowError):
        return None
    return None


def is_integer_text(text: str) -> bool:
    """True if the normalised answer is written as an integer (``-12``, ``025``)."""
    return bool(re.fullmatch(r"[-+]?\d+", text))
