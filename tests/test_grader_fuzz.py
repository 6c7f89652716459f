"""Property-based fuzz of answer extraction and grading (hypothesis): random LaTeX, deep
braces, huge numbers, long whitespace and arbitrary unicode never raise, and every call
returns within the grader's own bounds.

No clock is asserted: a call that ran past a generous alarm (far above the grader's hard
limits) raises `Overran` and fails the example, so a regression to super-linear time shows
as a failure, not as a flaky timing.
"""

import signal
from contextlib import contextmanager

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from marft_jax.envs.math.extract import extract_answer
from marft_jax.envs.math.grader import grade_answer, math_equal
from marft_jax.envs.math.normalize import normalize_answer

ALARM_S = 30  # the grader's symbolic limit here is 0.2 s; everything else is linear
SETTINGS = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

PIECES = ["\\boxed{", "\\fbox{", "{", "}", "\\frac", "\\dfrac{", "\\sqrt", "\\sqrt[3]{", "^",
          "_", "\\left(", "\\right)", "\\(", "\\)", "\\[", "\\]", "$", "\\$", "\\%", "%",
          " percent", " degrees", "^\\circ", "\\text{", "\\mathrm{", "\\pi", "\\infty", "\\cup",
          "\\begin{pmatrix}", "\\end{pmatrix}", "&", "\\\\", ",", ".", "-", "+", "=", "x = ",
          "\\times 10^{", "e", "E", "/", "(", ")", "[", "]", "The answer is ", "Answer：",
          "final answer: ", "答案是", " I hope", "\n", "eighteen", "twenty-one", "and",
          "\\phantom{", "1", "2", "12", "0.5", "3/4", "1,000"]


def _runs(draw_piece):
    return st.one_of(
        draw_piece,
        st.integers(1, 100_000).map(lambda n: " " * n),  # long whitespace
        st.integers(1, 3_000).map(lambda n: "{" * n + "1" + "}" * n),  # deep braces
        st.integers(1, 3_000).map(lambda n: "{" * n),  # unbalanced
        st.integers(1, 5_000).map(lambda n: "9" * n),  # huge numbers
        st.integers(1, 400).map(lambda n: "1e" + "9" * n),
        st.text(max_size=50),  # arbitrary unicode
    )


LATEX = st.lists(_runs(st.sampled_from(PIECES)), max_size=30).map("".join)
REFERENCES = st.one_of(st.sampled_from(["12", "\\frac{1}{2}", "18", "(1, 2)", "x^2+1",
                                        "\\sqrt{13}", "6.02e23", "Evelyn", "50\\%"]),
                       st.text(max_size=20), LATEX)


class Overran(Exception):
    pass


@contextmanager
def alarm(seconds=ALARM_S):
    def fire(signum, frame):
        raise Overran(f"a grading call ran past {seconds} s")
    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@SETTINGS
@given(response=LATEX, reference=REFERENCES)
def test_grade_answer_never_raises_and_stays_bounded(response, reference):
    with alarm():
        assert grade_answer(response, reference, timeout_s=0.2) in (True, False)
        assert grade_answer(response, reference, timeout_s=0.2, scoring="strict") in (
            True, False)


@SETTINGS
@given(text=LATEX)
def test_extract_and_normalise_never_raise_and_stay_bounded(text):
    with alarm():
        answer = extract_answer(text)
        assert answer is None or isinstance(answer, str)
        assert isinstance(normalize_answer(text[:5_000]), str)
        assert math_equal(answer, answer or "1", timeout_s=0.2) in (True, False)


@pytest.mark.parametrize("response", [
    "\\boxed{1" + " " * 20_000 + "2}",  # the case: ~10 s before the fix
    "\\boxed{" * 20_000,
    "{" * 50_000,
    "answer: " * 30_000,
    "9" * 100_000,
])
def test_named_pathological_inputs(response):
    with alarm():
        assert grade_answer(response, "12", timeout_s=0.2) in (True, False)
