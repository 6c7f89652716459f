"""The math task as a Flex-MG environment: a problem table in tokens and a host-side grader.

The rollout draws problems from the pre-tokenised table; after each round, the answering
agents' responses are detokenised, their answers extracted and graded against the ground
truth on the host (through `jax.pure_callback`, see `flexmg.rollout.host_reward`).
"""

from __future__ import annotations

import dataclasses
from typing import Protocol, Sequence

import jax.numpy as jnp
import numpy as np

from marft_jax.envs.math.datasets import MathProblem
from marft_jax.envs.math.grader import grade_answer
from marft_jax.errors import ConfigError
from marft_jax.flexmg.game import ProblemTable
from marft_jax.flexmg.rollout import host_reward


class TextCodec(Protocol):
    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids, skip_special_tokens: bool = True) -> str: ...


def answer_texts(tokenizer: TextCodec, answer_mask: Sequence[bool], actions: np.ndarray,
                 lengths: np.ndarray) -> list[tuple[tuple[int, int], str]]:
    """`[((agent, env), text)]`: the decoded response of every answering agent in every env.

    Args:
        answer_mask: `[A]` agents whose output is graded.
        actions: `[A, E, K]` response tokens.
        lengths: `[A, E]` response lengths.
    """
    return [((i, e), tokenizer.decode(actions[i, e, :lengths[i, e]], skip_special_tokens=True))
            for i, answering in enumerate(answer_mask) if answering
            for e in range(actions.shape[1])]


@dataclasses.dataclass(frozen=True)
class MathTask:
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
        """Grades one round on the host.

        Args:
            answer_mask: `[A]` agents whose output is graded.
            problem_ids: `[E]` problem of each env.
            actions: `[A, E, K]` response tokens.
            lengths: `[A, E]` response lengths.

        Returns:
            `[A, E]` float32, 1.0 where an answering agent's answer is correct.
        """
        correct = np.zeros(lengths.shape, np.float32)
        for (i, e), text in answer_texts(tokenizer, answer_mask, actions, lengths):
            correct[i, e] = float(grade_answer(text, self.problems[int(problem_ids[e])].answer,
                                               grader=self.grader))
        return correct

    def reward_fn(self, tokenizer: TextCodec, answer_mask: Sequence[bool]):
        """The rollout's `reward_fn` (a `jax.pure_callback` around `grade`)."""
        mask = tuple(bool(m) for m in answer_mask)
        return host_reward(lambda p, a, n: self.grade(tokenizer, mask, p, a, n), len(mask))


def build_math_task(problems: Sequence[MathProblem], tokenizer: TextCodec,
                    max_problem_tokens: int | None = None,
                    grader: str = "builtin") -> MathTask:
    """Tokenises `problems` into a table.

    Raises:
        ConfigError: no problems, or a problem longer than `max_problem_tokens`.
    """
    if not problems:
        raise ConfigError("math task: the problem list is empty")
    rows = [tokenizer.encode(p.problem) for p in problems]
    width = max(len(r) for r in rows)
    if max_problem_tokens is not None and width > max_problem_tokens:
        worst = int(np.argmax([len(r) for r in rows]))
        raise ConfigError(f"math task: problem {problems[worst].id!r} has {width} tokens, more "
                          f"than max_problem_tokens={max_problem_tokens}")
    tokens = np.zeros((len(rows), width), np.int32)
    for i, r in enumerate(rows):
        tokens[i, :len(r)] = r
    table = ProblemTable(tokens=jnp.asarray(tokens),
                         lengths=jnp.asarray([len(r) for r in rows], jnp.int32))
    return MathTask(problems=tuple(problems), table=table, grader=grader)
