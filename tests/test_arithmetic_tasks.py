"""Tests of the synthetic arithmetic word problems (marft_jax.envs.math.arithmetic)."""

import re

import pytest

from marft_jax.envs.math.arithmetic import (ArithmeticTaskConfig, evaluate_chain,
                                            generate_problems, generate_split,
                                            render_expression, split_problems)
from marft_jax.envs.math.datasets import MathProblem
from marft_jax.envs.math.grader import grade_answer
from marft_jax.errors import ConfigError

ALL_OPS = ArithmeticTaskConfig(digits=2, terms=4, ops=("+", "-", "*"), templates="mixed")


def _numbers(text: str) -> list[int]:
    return [int(number) for number in re.findall(r"\d+", text)]


def _recompute(problem: MathProblem) -> int:
    """The answer recomputed from the text alone (independently of the generator)."""
    text = problem.problem
    if " has " not in text:  # plain: evaluate the shown expression with Python precedence
        expression = re.search(r"(?:What is|Compute|Calculate) (.*)[?.]$", text).group(1)
        assert re.fullmatch(r"[\d\s()+\-×]+", expression), expression
        return eval(expression.replace("×", "*"), {"__builtins__": {}})  # digits/ops only
    value = None
    for sentence in re.split(r"(?<=[.?])\s+", text):
        numbers = _numbers(sentence)
        if " has " in sentence and value is None:
            value = numbers[0]
        elif "more" in sentence:
            value += numbers[0]
        elif "gives away" in sentence or "loses" in sentence:
            value -= numbers[0]
        elif "times as large" in sentence:
            value *= numbers[0]
    return value


def test_default_task_is_two_digit_addition():
    config = ArithmeticTaskConfig()
    assert (config.digits, config.terms, config.ops) == (2, 2, ("+",))
    for problem in generate_problems(config, 50, seed=0):
        operands = _numbers(problem.problem)
        assert len(operands) == 2 and all(10 <= number <= 99 for number in operands)
        assert int(problem.answer) == sum(operands)


def test_same_seed_same_problems_and_prefix_stability():
    first = generate_problems(ALL_OPS, 40, seed=7)
    assert first == generate_problems(ALL_OPS, 40, seed=7)
    assert generate_problems(ALL_OPS, 10, seed=7) == first[:10]


def test_different_seeds_differ():
    texts = [[problem.problem for problem in generate_problems(ALL_OPS, 20, seed=seed)]
             for seed in (0, 1, 2)]
    assert texts[0] != texts[1] and texts[1] != texts[2] and texts[0] != texts[2]


@pytest.mark.parametrize("config", [
    ArithmeticTaskConfig(),
    ALL_OPS,
    ArithmeticTaskConfig(digits=1, terms=5, ops=("-",), templates="word"),
    ArithmeticTaskConfig(digits=3, terms=3, ops=("+", "*"), templates="plain"),
    ArithmeticTaskConfig(digits=2, terms=6, ops=("-", "*"), templates="mixed",
                         nonnegative=False),
])
def test_answers_are_correct_integers(config):
    problems = generate_problems(config, 200, seed=3)
    for problem in problems:
        assert re.fullmatch(r"-?\d+", problem.answer)
        assert _recompute(problem) == int(problem.answer), problem.problem
        assert grade_answer(f"The answer is \\boxed{{{problem.answer}}}.", problem.answer)
    if config.nonnegative:
        assert all(int(problem.answer) >= 0 for problem in problems)


def test_nonnegative_off_allows_negative_results():
    config = ArithmeticTaskConfig(digits=2, terms=3, ops=("-",), nonnegative=False)
    assert any(int(problem.answer) < 0 for problem in generate_problems(config, 50, seed=0))


def test_templates_knob():
    plain = generate_problems(ArithmeticTaskConfig(templates="plain"), 30, seed=0)
    word = generate_problems(ArithmeticTaskConfig(templates="word"), 30, seed=0)
    mixed = generate_problems(ArithmeticTaskConfig(templates="mixed"), 60, seed=0)
    assert all(" has " not in problem.problem for problem in plain)
    assert all(problem.problem.endswith("have now?") for problem in word)
    assert {" has " in problem.problem for problem in mixed} == {True, False}


def test_difficulty_knob_changes_operand_sizes_and_term_counts():
    for digits in (1, 2, 4):
        for terms in (2, 3, 5):
            config = ArithmeticTaskConfig(digits=digits, terms=terms, templates="plain")
            low, high = config.operand_range
            for problem in generate_problems(config, 30, seed=digits * 10 + terms):
                operands = _numbers(problem.problem)
                assert len(operands) == terms
                assert all(low <= number <= high for number in operands)
                assert all(len(str(number)) == digits for number in operands)


def test_render_expression_keeps_left_to_right_order():
    assert render_expression((2, 3, 4), ("+", "*")) == "(2 + 3) × 4"
    assert render_expression((2, 3, 4, 5), ("*", "*", "-")) == "2 × 3 × 4 - 5"
    assert render_expression((2, 3, 4, 5), ("-", "*", "*")) == "(2 - 3) × 4 × 5"
    assert evaluate_chain((2, 3, 4), ("+", "*")) == 20
    assert evaluate_chain((9, 4, 2), ("-", "-")) == 3


def test_generate_split_is_disjoint_unique_and_deterministic():
    config = ArithmeticTaskConfig()
    train, heldout = generate_split(config, 600, 200, seed=0)
    assert (len(train), len(heldout)) == (600, 200)
    train_texts = {problem.problem for problem in train}
    held_texts = {problem.problem for problem in heldout}
    assert len(train_texts) == 600 and len(held_texts) == 200 and not train_texts & held_texts
    train_sums = {tuple(_numbers(problem.problem)) for problem in train}
    held_sums = {tuple(_numbers(problem.problem)) for problem in heldout}
    assert not train_sums & held_sums  # no held-out computation appears in training
    assert (train, heldout) == generate_split(config, 600, 200, seed=0)
    assert heldout != generate_split(config, 600, 200, seed=1)[1]


def test_generate_split_reports_an_exhausted_space():
    tiny = ArithmeticTaskConfig(digits=1, terms=2, ops=("+",), templates="plain")
    train, heldout = generate_split(tiny, 60, 20, seed=0)  # 81 distinct sums exist
    assert len(train) + len(heldout) == 80
    with pytest.raises(ConfigError, match="found only .* distinct problems"):
        generate_split(tiny, 80, 20, seed=0)


def test_split_problems_keeps_duplicates_on_one_side():
    problems = generate_problems(ArithmeticTaskConfig(digits=1), 300, seed=0)
    assert len({problem.problem for problem in problems}) < len(problems)  # duplicates
    train, heldout = split_problems(problems, 0.25, seed=0)
    assert len(train) + len(heldout) == len(problems)
    assert not {p.problem for p in train} & {p.problem for p in heldout}
    distinct = len({problem.problem for problem in problems})
    assert len({problem.problem for problem in heldout}) == round(0.25 * distinct)
    assert (train, heldout) == split_problems(problems, 0.25, seed=0)
    assert split_problems(problems, 10, seed=1)[1] != split_problems(problems, 10, seed=2)[1]
    with pytest.raises(ConfigError, match="heldout fraction"):
        split_problems(problems, 1.5, seed=0)
    with pytest.raises(ConfigError, match="heldout count"):
        split_problems(problems, distinct + 1, seed=0)


@pytest.mark.parametrize("kwargs, field", [
    ({"digits": 0}, "digits"),
    ({"digits": 2.0}, "digits"),
    ({"terms": 1}, "terms"),
    ({"ops": ()}, "ops"),
    ({"ops": ("/",)}, "ops"),
    ({"templates": "poem"}, "templates"),
])
def test_bad_config_names_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=f"ArithmeticTaskConfig.{field}"):
        ArithmeticTaskConfig(**kwargs)
