"""English number words as digits: ``eighteen`` -> 18, ``two hundred and five`` -> 205.

Used by the normaliser when a whole answer is written in words (researchers' graders accept
``eighteen`` for 18). Cardinals up to the billions, with hyphens (``twenty-one``), an
optional "a" (``a hundred``) and "and"; anything else is not a number word.
"""

from __future__ import annotations

import re

_UNITS = {name: value for value, name in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen".split())}
_TENS = {name: 10 * (i + 2) for i, name in enumerate(
    "twenty thirty forty fifty sixty seventy eighty ninety".split())}
_SCALES = {"thousand": 10 ** 3, "million": 10 ** 6, "billion": 10 ** 9}
_WORDS_RE = re.compile(r"[a-z]+(?:[\s-]+[a-z]+)*")
MAX_WORDS = 12


def parse_number_words(text: str) -> int | None:
    """The integer an answer spells out (case-insensitive, an optional leading minus /
    "negative"), or None when it is not (only) number words."""
    text = text.strip().lower()
    sign = 1
    if text.startswith(("-", "negative ", "minus ")):
        sign, text = -1, text.split(" ", 1)[1] if text[0] != "-" else text[1:]
    if not _WORDS_RE.fullmatch(text):
        return None
    words = [w for w in re.split(r"[\s-]+", text) if w != "and"]
    if not words or len(words) > MAX_WORDS:
        return None
    if words[0] == "a" and len(words) > 1:
        words[0] = "one"
    total, group, seen = 0, 0, False
    for word in words:
        if word in _UNITS:
            group += _UNITS[word]
        elif word in _TENS:
            group += _TENS[word]
        elif word == "hundred":
            group = max(group, 1) * 100
        elif word in _SCALES:
            total += max(group, 1) * _SCALES[word]
            group = 0
        else:
            return None
        seen = True
    return sign * (total + group) if seen else None
