"""The math task as a Flex-MG environment: a problem table in tokens and a host-side grader.

The rollout draws problems from the pre-tokenised table; after each round, the answering
agents' responses are detokenised, their answers extracted and graded against the ground
truth on the host (a `flexmg.driver.HostReward`).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from marft_jax.envs.math.datasets import MathProblem
from marft_jax.envs.host_graded import HostGraded, TextCodec, answer_texts, token_table
from marft_jax.envs.math.grader import grade_answer
from marft_jax.errors import ConfigError
from marft_jax.flexmg.game import ProblemTable


@dataclasses.dataclass(frozen=True)
class MathTask(HostGraded):
    """Problems, their token table and the grading function.

    Attributes:
        problems: the problems, indexed like the table's rows.
        table: `ProblemTable` with `[P, Lp]` tokens.
        grader: a name in `grader.GRADERS` ("builtin" or "math_verify").
    """

    problems: tuple[MathProblem, ...]
    table: ProblemTable
    grader: str = "builtin"

    def grade(self, tokenizer: TextCodec, answer_mask: Sequence[bool], problem_ids: np.ndarray,
              actions: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """`HostGraded.grade`: 1.0 where an answering agent's answer is correct."""
        correct = np.zeros(lengths.shape, np.float32)
        for (i, e), text in answer_texts(tokenizer, answer_mask, actions, lengths):
            correct[i, e] = float(grade_answer(text, self.problems[int(problem_ids[e])].answer,
                                               grader=self.grader))
        return correct


def build_math_task(problems: Sequence[MathProblem], tokenizer: TextCodec,
                    max_problem_tokens: int | None = None,
                    grader: str = "builtin") -> MathTask:
    """Tokenises `problems` into a table.

    Raises:
        ConfigError: no problems, or a problem longer than `max_problem_tokens`.
    """
    if not problems:
        raise ConfigError("math task: the problem list is empty")
    table = token_table(tokenizer, [p.problem for p in problems])
    width = table.tokens.shape[1]
    if max_problem_tokens is not None and width > max_problem_tokens:
        worst = int(np.argmax(np.asarray(table.lengths)))
        raise ConfigError(f"math task: problem {problems[worst].id!r} has {width} tokens, more "
                          f"than max_problem_tokens={max_problem_tokens}")
    return MathTask(problems=tuple(problems), table=table, grader=grader)
