"""Equivalence grading of math answers: ``math_equal``, ``grade_answer``, ``grade_responses``.

Order of checks (the first that decides wins):

1. normalised strings equal (``normalize_answer``) -> equal;
2. multiple-choice letters (``(C)`` vs ``C``);
3. both plain numbers (integers, decimals, fractions, mixed numbers) -> exact comparison for
   two integers, relative tolerance 1e-4 otherwise; when either side is marked as a
   percentage (``50%``), the reference also matches as x/100 and x*100;
4. compound answers, element-wise: matrices, unions of intervals, intervals and tuples
   (bracket kinds must agree: ``[0,1)`` differs from ``(0,1)``) in order, bare comma lists
   (``3, 5, 7``) and sets as multisets;
5. text answers (words of three or more letters) compare case-insensitively, never
   symbolically (``Evelyn`` must not equal ``lynEve`` as a product of symbols);
6. symbolic equality with sympy (``symbolic.symbolic_equal``), in a worker process under a
   hard timeout; a timeout means "not equal".

Steps 1-5 run in-process and never touch sympy, so plain-number answers grade in
microseconds. Every in-process step is bounded too: extraction is linear in the response,
a response is read from its last ``MAX_RESPONSE_CHARS`` characters and an extracted answer
longer than ``MAX_ANSWER_CHARS`` (after collapsing runs of spaces) is only compared as a
string, so normalisation never sees a pathological input.

``grader="math_verify"`` grades with Hugging Face's ``math-verify`` instead (its own
extraction and equivalence), in a worker process under the same hard timeout, so results
can be compared with papers that grade with it.

Deviations from the reference grader (on purpose): percent variants apply only
when a percent sign is present (the reference lets ``2`` equal ``200``); two integers must be
equal exactly (the reference's 1e-4 tolerance lets ``10000`` equal ``10001``); sympy has a
hard timeout.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from fractions import Fraction

import numpy as np

from marft_jax.envs.math.extract import extract_answer
from marft_jax.envs.math.latex_text import split_top_level, wrapped_by_brackets
from marft_jax.envs.math.normalize import (has_percent, is_integer_text, normalize_answer,
                                           parse_number)
from marft_jax.envs.math.worker import default_worker, math_verify_worker

REL_TOL = 1e-4
DEFAULT_TIMEOUT_S = 2.0
MAX_RESPONSE_CHARS = 100_000
MAX_ANSWER_CHARS = 1_000
GRADERS = ("builtin", "math_verify")
_CHOICE_RE = re.compile(r"\(?([A-E])\)?")
_MATRIX_RE = re.compile(
    r"\\begin\{([pbvBV]?matrix|array)\}(?:\{[^{}]*\})?(?P<body>.*)\\end\{\1\}", re.DOTALL)
_WORD_RE = re.compile(r"[a-zA-Z]{3,}|[^\x00-\x7f]")
_COMMAND_RE = re.compile(r"\\[a-zA-Z]+")


def math_equal(prediction: str | None, reference: str, *,
               timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """True if ``prediction`` and ``reference`` are the same mathematical answer.

    Args:
        prediction: the extracted answer of a response, or None (never equal).
        reference: the ground-truth answer.
        timeout_s: hard limit, in seconds, on the symbolic part of this call (shared by all
            elements of a compound answer); past it the answer counts as not equal.

    Returns:
        Whether the answers are equivalent (see the module docstring for the rules). An
        empty reference (a few MATH records lost theirs) is never matched.
    """
    if prediction is None or reference is None:
        return False
    prediction, reference = " ".join(prediction.split()), " ".join(reference.split())
    if len(prediction) > MAX_ANSWER_CHARS or len(reference) > MAX_ANSWER_CHARS:
        return bool(reference) and prediction == reference
    pred, ref = normalize_answer(prediction), normalize_answer(reference)
    if not ref:
        return False
    percent = has_percent(prediction) or has_percent(reference)
    return _equal(pred, ref, percent, time.monotonic() + timeout_s)


def _equal(pred: str, ref: str, percent: bool, deadline: float) -> bool:
    """Equality of two normalised answers (steps 1-6 of the module docstring)."""
    if pred == ref:
        return True
    if not pred or not ref:
        return False
    choice_pred, choice_ref = _CHOICE_RE.fullmatch(pred), _CHOICE_RE.fullmatch(ref)
    if choice_pred and choice_ref:
        return choice_pred.group(1) == choice_ref.group(1)
    number_pred, number_ref = parse_number(pred), parse_number(ref)
    if number_pred is not None and number_ref is not None:
        exact = is_integer_text(pred) and is_integer_text(ref)
        return numbers_equal(number_pred, number_ref, percent=percent, exact=exact)
    compound = _compound_equal(pred, ref, percent, deadline)
    if compound is not None:
        return compound
    if _is_text(pred) or _is_text(ref):
        return pred.lower() == ref.lower()
    return _symbolic_equal(pred, ref, deadline)


def numbers_equal(prediction: Fraction, reference: Fraction, *, percent: bool = False,
                  exact: bool = False) -> bool:
    """Numeric equality with relative tolerance 1e-4 (or exactly), with percent variants.

    Args:
        prediction: the predicted value.
        reference: the reference value.
        percent: also accept ``reference / 100`` and ``reference * 100``.
        exact: compare exactly (used when both are written as integers).
    """
    candidates = [reference]
    if percent:
        candidates += [reference / 100, reference * 100]
    for candidate in candidates:
        if exact and candidate.denominator == 1:
            if prediction == candidate:
                return True
            continue
        if prediction == candidate:
            return True
        scale = max(abs(prediction), abs(candidate))
        if abs(prediction - candidate) <= REL_TOL * scale:
            return True
    return False


def _is_text(answer: str) -> bool:
    """True if the answer contains a word (3+ letters outside commands) or non-ASCII text."""
    return bool(_WORD_RE.search(_COMMAND_RE.sub("", answer)))


def _compound_equal(pred: str, ref: str, percent: bool, deadline: float) -> bool | None:
    """Element-wise equality of matrices, unions, intervals/tuples and lists.

    Returns None when neither answer is compound (the caller goes on to the next check).
    """
    matrix_pred, matrix_ref = _matrix(pred), _matrix(ref)
    if matrix_pred is not None or matrix_ref is not None:
        if matrix_pred is None or matrix_ref is None:
            return False
        if [len(row) for row in matrix_pred] != [len(row) for row in matrix_ref]:
            return False
        return all(_equal_element(p, r, percent, deadline) for row_p, row_r in
                   zip(matrix_pred, matrix_ref) for p, r in zip(row_p, row_r))
    union_pred, union_ref = split_top_level(pred, "\\cup"), split_top_level(ref, "\\cup")
    if len(union_pred) > 1 or len(union_ref) > 1:
        return len(union_pred) == len(union_ref) and all(
            _equal_element(p, r, percent, deadline) for p, r in zip(union_pred, union_ref))
    sequence_pred, sequence_ref = _bracketed(pred), _bracketed(ref)
    if sequence_pred is not None or sequence_ref is not None:
        if sequence_pred is None or sequence_ref is None:
            return False
        (open_p, items_p, close_p), (open_r, items_r, close_r) = sequence_pred, sequence_ref
        return (open_p == open_r and close_p == close_r and len(items_p) == len(items_r)
                and all(_equal_element(p, r, percent, deadline)
                        for p, r in zip(items_p, items_r)))
    list_pred, list_ref = split_top_level(pred, ","), split_top_level(ref, ",")
    if len(list_pred) > 1 or len(list_ref) > 1:
        return _multiset_equal(list_pred, list_ref, percent, deadline)
    return None


def _equal_element(pred: str, ref: str, percent: bool, deadline: float) -> bool:
    return _equal(normalize_answer(pred), normalize_answer(ref), percent, deadline)


def _matrix(answer: str) -> list[list[str]] | None:
    """Rows of cells of a ``\\begin{pmatrix}...\\end{pmatrix}`` answer, or None."""
    match = _MATRIX_RE.fullmatch(answer)
    if match is None:
        return None
    rows = [row for row in match.group("body").split("\\\\") if row.strip()]
    return [split_top_level(row, "&") for row in rows]


def _bracketed(answer: str) -> tuple[str, list[str], str] | None:
    """``(open, items, close)`` of a bracketed sequence with two or more items, or None."""
    if not wrapped_by_brackets(answer) or answer[0] == "{":
        return None
    items = split_top_level(answer[1:-1], ",")
    if len(items) < 2:
        return None
    return answer[0], items, answer[-1]


def _multiset_equal(pred: list[str], ref: list[str], percent: bool, deadline: float) -> bool:
    """Unordered element-wise equality (each reference item matched once)."""
    if len(pred) != len(ref):
        return False
    unmatched = list(ref)
    for item in pred:
        for index, candidate in enumerate(unmatched):
            if _equal_element(item, candidate, percent, deadline):
                del unmatched[index]
                break
        else:
            return False
    return True


def _symbolic_equal(pred: str, ref: str, deadline: float) -> bool:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return False
    return _cached_symbolic(pred, ref, remaining)


_CACHE_SIZE = 8192
_CACHE: dict[tuple[str, str], bool] = {}


def _cached_symbolic(pred: str, ref: str, timeout_s: float) -> bool:
    """The worker's answer, memoised for completed comparisons (timeouts are not cached)."""
    key = (pred, ref)
    if key in _CACHE:
        return _CACHE[key]
    answer = default_worker().compare(pred, ref, timeout_s)
    if answer is None:
        return False
    if len(_CACHE) >= _CACHE_SIZE:
        _CACHE.clear()
    _CACHE[key] = answer
    return answer


# How an answer is found in a response (`extract.extract_answer` options): "lenient" (a box,
# else an answer phrase, else the last number: the reward of the math tasks) and "strict"
# (a \boxed{} answer only).
SCORINGS = {"lenient": {}, "strict": {"boxed_only": True}}


def grade_answer(response: str, reference: str, *, timeout_s: float = DEFAULT_TIMEOUT_S,
                 fallback_last_number: bool = True, scoring: str = "lenient",
                 grader: str = "builtin") -> bool:
    """Extract the answer of ``response`` and compare it with ``reference``.

    Args:
        response: a model response.
        reference: the ground-truth answer (as ``MathProblem.answer``).
        timeout_s: see ``math_equal``.
        fallback_last_number: see ``extract.extract_answer``.
        scoring: a name in ``SCORINGS`` (builtin grader).
        grader: a name in ``GRADERS``: "builtin" (this module) or "math_verify" (HF's
            ``math-verify``: ``verify(parse("\\boxed{reference}"), parse(response))`` in a
            worker process killed after ``timeout_s``; a timeout means "not equal").
    """
    if grader == "math_verify":
        return math_verify_equal(response, reference, timeout_s=timeout_s)
    if grader != "builtin":
        raise ValueError(f"grader {grader!r} is not one of {list(GRADERS)}")
    prediction = extract_answer(response[-MAX_RESPONSE_CHARS:],
                                fallback_last_number=fallback_last_number,
                                **SCORINGS[scoring])
    return math_equal(prediction, reference, timeout_s=timeout_s)


def math_verify_equal(response: str, reference: str, *,
                      timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """HF ``math-verify``'s verdict on a whole response, under a hard timeout.

    Raises:
        WorkerStartError: ``math-verify`` is not installed (pip install math-verify==0.9.0).
    """
    if not response or not reference:
        return False
    answer = math_verify_worker().compare(response[-MAX_RESPONSE_CHARS:], reference,
                                          timeout_s)
    return bool(answer)


def grade_responses(responses: Sequence[str], references: Sequence[str], *,
                    timeout_s: float = DEFAULT_TIMEOUT_S,
                    fallback_last_number: bool = True) -> np.ndarray:
    """Grade a batch of responses against their references.

    Args:
        responses: [batch] model responses.
        references: [batch] ground-truth answers, one per response.
        timeout_s: per-response limit (see ``math_equal``).
        fallback_last_number: see ``extract.extract_answer``.

    Returns:
        [batch] bool array, True where the response is correct.

    Raises:
        ValueError: if the two sequences differ in length.
    """
    if len(responses) != len(references):
        raise ValueError(
            f"grade_responses: {len(responses)} responses but {len(references)} references")
    return np.array([grade_answer(response, reference, timeout_s=timeout_s,
                                  fallback_last_number=fallback_last_number)
                     for response, reference in zip(responses, references)], dtype=bool)
