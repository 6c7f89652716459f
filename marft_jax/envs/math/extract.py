"""Answer extraction: the final answer of a model response, and the ground truth of a record.

A response's answer is, in order of preference: the content of its last ``\\boxed{...}`` (or
``\\fbox{...}``; a box that is never closed, as in a truncated response, gives the rest of
the text); else what follows its last "the answer is" / "final answer is" / "Answer:" phrase
(up to the end of that sentence); else, optionally, its last number (``6.02e23`` included).
The extracted text is raw: normalisation belongs to the grader.

Every function here runs in time linear in the text (no regex backtracks over a run of
characters once per position), so extraction needs no timeout.
"""

from __future__ import annotations

import re

from marft_jax.envs.math.latex_text import closing_brace

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![a-zA-Z])")

# "final answer is", "the answer is", "answer:", "answer =", and the Chinese "答案是/为/：".
_PHRASE_RE = re.compile(
    r"(?:final\s+answer|\banswer)\s*(?:is\b\s*[:：]?|[:：]|=)|答案\s*(?:是|为|:|：)",
    re.IGNORECASE)
# `(?<!\s)`: a match starts at the beginning of a run of spaces, never inside it (else the
# search backtracks over the run once per position: quadratic time on long runs).
_HOPE_RE = re.compile(r"(?<!\s)\s+I\s+hope\b", re.IGNORECASE)

# A number not glued to a word: optional sign, thousands groups or plain digits, decimals,
# and an optional "/denominator" (3/4) or exponent (6.02e23, 1E-5).
_NUMBER_RE = re.compile(
    r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+(?![\w.])|/\d+)?"
    r"(?![\d])|(?<![\w.])-?\.\d+")
_THOUSANDS_RE = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` / ``\\fbox{...}`` in ``text``.

    Braces are matched, so nested groups (``\\boxed{\\frac{1}{2}}``) are kept whole. The
    space form ``\\boxed 5`` gives the following word. A last box that is never closed (a
    truncated response) gives the rest of the text (not an earlier box, nor a later
    number); an empty one is skipped in favour of an earlier one.

    Returns:
        The box content, stripped, or None if there is no usable box.
    """
    for match in reversed(list(_BOX_RE.finditer(text))):
        content = _box_content(text, match.end())
        if content:
            return content
    return None


def _box_content(text: str, start: int) -> str | None:
    """Content of a box whose command name ends at ``start``."""
    index = start
    if index < len(text) and text[index] == " ":
        while index < len(text) and text[index] == " ":
            index += 1
        if index < len(text) and text[index] != "{":
            # "\boxed 5$" or "\boxed 5." (TeX's one-token argument, written as a word).
            word = re.match(r"[^\s$]+", text[index:])
            return word.group(0).rstrip(".") if word else None
    if index >= len(text) or text[index] != "{":
        return None
    close = closing_brace(text, index)
    if close is None:  # never closed: the rest of the text
        return text[index + 1:].strip().rstrip("$").strip() or None
    return text[index + 1:close].strip() or None


def answer_phrase(text: str) -> str | None:
    """The text after the last "the answer is" / "final answer is" / "Answer:" phrase.

    The answer runs to the end of its sentence: a newline, a ``.`` followed by a space or the
    end of the text (a decimal point does not end it), a ``;``, a ``?``, a comma outside
    brackets and ``$...$`` followed by a space, or "I hope". Markdown bold and surrounding
    spaces are removed.

    Returns:
        The answer text, or None if no phrase is followed by an answer.
    """
    for match in reversed(list(_PHRASE_RE.finditer(text))):
        answer = _sentence(text[match.end():])
        if answer:
            return answer
    return None


def _sentence(rest: str) -> str:
    """The first sentence of ``rest``, cut at depth 0 (see ``answer_phrase``).

    "I hope" is looked for inside the sentence only (the same cut as searching all of
    ``rest`` first), so a text with many answer phrases is scanned in linear time.
    """
    depth = 0
    in_math = False
    end = len(rest)
    for index, char in enumerate(rest):
        after = rest[index + 1] if index + 1 < len(rest) else " "
        if char == "$":
            in_math = not in_math
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "\n" or char in ";?。":
            end = index
            break
        elif char == "." and after.isspace() and depth <= 0:
            end = index
            break
        elif char == "," and after.isspace() and depth <= 0 and not in_math:
            end = index
            break
    hope = _HOPE_RE.search(rest, 0, end)
    if hope:
        end = hope.start()
    return rest[:end].strip().strip("*").strip().rstrip(".").strip()


def last_number(text: str) -> str | None:
    """The last number in ``text`` (``-12``, ``1,000``, ``3.5``, ``3/4``, ``.5``), or None."""
    numbers = _NUMBER_RE.findall(text)
    return numbers[-1] if numbers else None


def extract_answer(response: str, *, fallback_last_number: bool = True,
                   boxed_only: bool = False) -> str | None:
    """The final answer of a model response, unnormalised.

    Args:
        response: the generated text.
        fallback_last_number: when there is neither a box nor an answer phrase, return the
            last number in the text (the reference parser's behaviour). Set False for a strict
            grader that only accepts explicit answers.
        boxed_only: accept only a ``\\boxed{}`` answer (the "strict" scoring: a gain in it
            can come from learning the answer format).

    Returns:
        The extracted answer, or None when nothing is found.
    """
    if not response:
        return None
    boxed = last_boxed(response)
    if boxed is not None or boxed_only:
        return boxed
    phrase = answer_phrase(response)
    if phrase is not None:
        return phrase
    if fallback_last_number:
        return last_number(response)
    return None


def extract_reference(raw: str) -> str:
    """The ground-truth answer of a dataset record, as the grader should see it.

    Handles the stored formats: MATH ``final_answer`` and MATH-500 ``answer`` (LaTeX; a
    ``\\boxed{}`` wrapper is removed), GSM8K (``"#### 72"`` solutions; thousands commas in
    ``"1,450,000"`` removed), CMATH and AIME (plain numbers, kept as written).

    Args:
        raw: the stored answer field.

    Returns:
        The answer text, stripped (may be empty if the field is empty).
    """
    text = raw.strip()
    if "####" in text:
        text = text.rsplit("####", 1)[1].strip()
    boxed = last_boxed(text)
    if boxed is not None and text.startswith(("\\boxed", "\\fbox", "$\\boxed")):
        text = boxed
    if _THOUSANDS_RE.fullmatch(text):
        text = text.replace(",", "")
    return text
