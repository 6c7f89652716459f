"""Synthetic arithmetic word problems with a difficulty knob (the project's default task).

A problem is a chain ``a0 op1 a1 op2 a2 ...`` of ``terms`` operands with exactly ``digits``
digits each, evaluated left to right (``+``, ``-``, ``*``; answers are integers). It is
written either plainly ("What is 23 + 45?", with parentheses where left-to-right order
differs from the usual precedence) or as a short story about a quantity that changes step
by step ("Tom has 23 apples. He buys 45 more apples. How many apples does Tom have now?").
With ``nonnegative`` (the default) every running value stays >= 0, as stories require.

Randomness comes from a NumPy ``Generator`` seeded per call; no global RNG is used, so the
same config, count and seed always give the same problems. The default config is two-digit
addition of two terms.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from marft_jax.envs.math.datasets import MathProblem
from marft_jax.errors import ConfigError

OPERATIONS = ("+", "-", "*")
TEMPLATE_KINDS = ("plain", "word", "mixed")
_SYMBOLS = {"+": "+", "-": "-", "*": "×"}
_NAMES = (("Tom", "he", "him"), ("Anna", "she", "her"), ("Ravi", "he", "him"),
          ("Mei", "she", "her"), ("Lucas", "he", "him"), ("Sara", "she", "her"),
          ("Omar", "he", "him"), ("Lena", "she", "her"))
_ITEMS = (("apple", "apples"), ("marble", "marbles"), ("sticker", "stickers"),
          ("coin", "coins"), ("book", "books"), ("pencil", "pencils"),
          ("cookie", "cookies"), ("shell", "shells"))
_PLAIN_TEMPLATES = ("What is {expr}?", "Compute {expr}.", "Calculate {expr}.")
_STEP_TEMPLATES = {
    "+": ("{Pronoun} buys {n} more {items}.", "{Pronoun} finds {n} more {items}.",
          "A friend gives {obj} {n} more {items}."),
    "-": ("{Pronoun} gives away {n} {items}.", "{Pronoun} loses {n} {items}."),
    "*": ("Then the number of {all_items} {pronoun} has becomes {n} times as large.",),
}
_MAX_DRAWS_PER_PROBLEM = 50


@dataclasses.dataclass(frozen=True)
class ArithmeticTaskConfig:
    """Difficulty of generated arithmetic problems.

    Attributes:
        digits: digits of every operand (1 -> 1..9, 2 -> 10..99, ...).
        terms: number of operands (>= 2).
        ops: allowed operations, a subset of ``("+", "-", "*")``; each step draws one.
        templates: ``"plain"`` (expressions), ``"word"`` (stories) or ``"mixed"``.
        nonnegative: keep every running value >= 0 (a subtraction that would go negative
            takes a smaller operand; when none is possible it becomes an addition, or a
            multiplication if ops allow "*" but not "+").
    """

    digits: int = 2
    terms: int = 2
    ops: tuple[str, ...] = ("+",)
    templates: str = "mixed"
    nonnegative: bool = True

    def __post_init__(self):
        if isinstance(self.digits, bool) or not isinstance(self.digits, int) or not (
                1 <= self.digits <= 12):
            raise ConfigError(f"ArithmeticTaskConfig.digits: expected an integer in 1..12, "
                              f"got {self.digits!r}")
        if isinstance(self.terms, bool) or not isinstance(self.terms, int) or not (
                2 <= self.terms <= 16):
            raise ConfigError(f"ArithmeticTaskConfig.terms: expected an integer in 2..16, "
                              f"got {self.terms!r}")
        ops = tuple(self.ops) if not isinstance(self.ops, str) else (self.ops,)
        if not ops or any(op not in OPERATIONS for op in ops):
            raise ConfigError(f"ArithmeticTaskConfig.ops: expected a non-empty subset of "
                              f"{OPERATIONS}, got {self.ops!r}")
        object.__setattr__(self, "ops", ops)
        if self.templates not in TEMPLATE_KINDS:
            raise ConfigError(f"ArithmeticTaskConfig.templates: expected one of "
                              f"{TEMPLATE_KINDS}, got {self.templates!r}")

    @property
    def operand_range(self) -> tuple[int, int]:
        """Inclusive ``(low, high)`` of an operand."""
        return (1 if self.digits == 1 else 10 ** (self.digits - 1)), 10 ** self.digits - 1


def evaluate_chain(operands: Sequence[int], ops: Sequence[str]) -> int:
    """Left-to-right value of ``operands[0] ops[0] operands[1] ...``."""
    value = int(operands[0])
    for op, operand in zip(ops, operands[1:]):
        value = value + operand if op == "+" else value - operand if op == "-" else (
            value * operand)
    return value


def render_expression(operands: Sequence[int], ops: Sequence[str]) -> str:
    """The chain as a conventional expression, parenthesised to keep left-to-right order."""
    text = str(operands[0])
    additive = False
    for op, operand in zip(ops, operands[1:]):
        if op == "*" and additive:
            text = f"({text})"
        text = f"{text} {_SYMBOLS[op]} {operand}"
        additive = op != "*"
    return text


def _draw_chain(config: ArithmeticTaskConfig, rng: np.random.Generator
                ) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """Draw operands and operations (respecting ``nonnegative``)."""
    low, high = config.operand_range
    operands = [int(rng.integers(low, high + 1))]
    ops = []
    value = operands[0]
    for _ in range(config.terms - 1):
        op = config.ops[int(rng.integers(len(config.ops)))]
        if op == "-" and config.nonnegative and value < high:
            if value >= low:
                operand = int(rng.integers(low, value + 1))
            else:
                op = "*" if "*" in config.ops and "+" not in config.ops else "+"
                operand = int(rng.integers(low, high + 1))
        else:
            operand = int(rng.integers(low, high + 1))
        ops.append(op)
        operands.append(operand)
        value = evaluate_chain((value, operand), (op,))
    return tuple(operands), tuple(ops)


def _render(operands: tuple[int, ...], ops: tuple[str, ...], kind: str,
            rng: np.random.Generator) -> str:
    """Problem text of a chain in a plain or story template."""
    if kind == "plain":
        template = _PLAIN_TEMPLATES[int(rng.integers(len(_PLAIN_TEMPLATES)))]
        return template.format(expr=render_expression(operands, ops))
    name, pronoun, obj = _NAMES[int(rng.integers(len(_NAMES)))]
    singular, plural = _ITEMS[int(rng.integers(len(_ITEMS)))]

    def items(count: int) -> str:
        return singular if count == 1 else plural

    sentences = [f"{name} has {operands[0]} {items(operands[0])}."]
    for op, operand in zip(ops, operands[1:]):
        options = _STEP_TEMPLATES[op]
        sentences.append(options[int(rng.integers(len(options)))].format(
            Pronoun=pronoun.capitalize(), pronoun=pronoun, obj=obj, n=operand,
            items=items(operand), all_items=plural))
    sentences.append(f"How many {plural} does {name} have now?")
    return " ".join(sentences)


def _draw_problem(config: ArithmeticTaskConfig, rng: np.random.Generator
                  ) -> tuple[tuple[int, ...], tuple[str, ...], str]:
    operands, ops = _draw_chain(config, rng)
    kind = config.templates
    if kind == "mixed":
        kind = ("plain", "word")[int(rng.integers(2))]
    return operands, ops, _render(operands, ops, kind, rng)


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), stream]))


def generate_problems(config: ArithmeticTaskConfig, n: int, seed: int) -> list[MathProblem]:
    """``n`` problems drawn independently (duplicates possible) from ``seed``.

    Args:
        config: the difficulty.
        n: how many problems.
        seed: the seed; the same (config, n, seed) always gives the same list, and the first
            k problems do not depend on n.

    Returns:
        Problems with ids ``arith/<seed>/<index>`` and integer answers as strings.
    """
    if n < 0:
        raise ConfigError(f"generate_problems: n must be >= 0, got {n}")
    rng = _rng(seed, 0)
    problems = []
    for index in range(n):
        operands, ops, text = _draw_problem(config, rng)
        problems.append(MathProblem(text, str(evaluate_chain(operands, ops)),
                                    f"arith/{seed}/{index}"))
    return problems


def generate_split(config: ArithmeticTaskConfig, n_train: int, n_heldout: int, seed: int
                   ) -> tuple[list[MathProblem], list[MathProblem]]:
    """Disjoint train and held-out problem sets, each free of duplicates.

    Held-out problems come from their own seed stream; a training draw is rejected when its
    *expression* (operands and operations, whatever the wording) is already held out or
    already drawn, so no held-out computation, and hence no held-out text, is ever trained on.

    Raises:
        ConfigError: if the config has too few distinct problems for the requested sizes.
    """
    heldout = _unique(config, n_heldout, _rng(seed, 1), set(), f"arith-heldout/{seed}")
    taken = {key for key, _ in heldout}
    train = _unique(config, n_train, _rng(seed, 2), taken, f"arith-train/{seed}")
    return [problem for _, problem in train], [problem for _, problem in heldout]


def _unique(config: ArithmeticTaskConfig, n: int, rng: np.random.Generator, taken: set,
            prefix: str) -> list[tuple[tuple, MathProblem]]:
    """``n`` problems whose expressions are new (not in ``taken``; ``taken`` is updated)."""
    problems = []
    draws = 0
    while len(problems) < n:
        if draws >= _MAX_DRAWS_PER_PROBLEM * n + 1000:
            raise ConfigError(f"ArithmeticTaskConfig: found only {len(problems)} distinct "
                              f"problems of {n} requested for digits={config.digits}, "
                              f"terms={config.terms}, ops={config.ops}; ask for fewer")
        draws += 1
        operands, ops, text = _draw_problem(config, rng)
        key = (operands, ops)
        if key in taken:
            continue
        taken.add(key)
        answer = str(evaluate_chain(operands, ops))
        problems.append((key, MathProblem(text, answer, f"{prefix}/{len(problems)}")))
    return problems


def split_problems(problems: Sequence[MathProblem], heldout: int | float, seed: int
                   ) -> tuple[list[MathProblem], list[MathProblem]]:
    """Deterministic train / held-out split of any problem list, disjoint by problem text.

    Problems with identical text always land on the same side, so no held-out text is
    trained on even when the list contains duplicates.

    Args:
        problems: the problems to split (order is kept inside each side).
        heldout: the held-out share: a count of distinct texts (int) or a fraction (float in
            [0, 1]).
        seed: seeds the permutation of distinct texts.

    Returns:
        ``(train, heldout)``.
    """
    texts = list(dict.fromkeys(problem.problem for problem in problems))
    if isinstance(heldout, float):
        if not 0.0 <= heldout <= 1.0:
            raise ConfigError(f"split_problems: heldout fraction must be in [0, 1], got {heldout}")
        count = int(round(heldout * len(texts)))
    else:
        count = int(heldout)
        if not 0 <= count <= len(texts):
            raise ConfigError(f"split_problems: heldout count must be in 0..{len(texts)} "
                              f"(distinct texts), got {heldout}")
    order = _rng(seed, 3).permutation(len(texts))
    held_texts = {texts[index] for index in order[:count]}
    train = [problem for problem in problems if problem.problem not in held_texts]
    held = [problem for problem in problems if problem.problem in held_texts]
    return train, held
