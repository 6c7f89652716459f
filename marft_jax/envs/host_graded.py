"""What the text tasks (math, code) share: a problem table in tokens, and a grader that
runs on the host after each round (a `flexmg.driver.HostReward`)."""

from __future__ import annotations

from typing import Protocol, Sequence

import jax.numpy as jnp
import numpy as np

from marft_jax.flexmg.game import ProblemTable
from marft_jax.flexmg.driver import HostReward


class TextCodec(Protocol):
    """What a task needs of a tokenizer."""

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


def token_table(tokenizer: TextCodec, texts: Sequence[str]) -> ProblemTable:
    """The texts tokenised into a right-padded `[P, Lp]` table with their lengths."""
    rows = [tokenizer.encode(text) for text in texts]
    tokens = np.zeros((len(rows), max(len(r) for r in rows)), np.int32)
    for i, r in enumerate(rows):
        tokens[i, :len(r)] = r
    return ProblemTable(tokens=jnp.asarray(tokens),
                        lengths=jnp.asarray([len(r) for r in rows], jnp.int32))


class HostGraded:
    """A task graded on the host: subclasses define `grade`; `reward_fn` wraps it."""

    def grade(self, tokenizer: TextCodec, answer_mask: Sequence[bool], problem_ids: np.ndarray,
              actions: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Grades one round on the host.

        Args:
            tokenizer: decodes the responses.
            answer_mask: `[A]` agents whose output is graded.
            problem_ids: `[E]` problem of each env.
            actions: `[A, E, K]` response tokens.
            lengths: `[A, E]` response lengths.

        Returns:
            `[A, E]` float32: each answering agent's reward (0 for the others).
        """
        raise NotImplementedError

    def reward_fn(self, tokenizer: TextCodec, answer_mask: Sequence[bool]) -> HostReward:
        """The rollout's `reward_fn`: `grade` on the host between a round's jitted parts."""
        mask = tuple(bool(m) for m in answer_mask)
        return HostReward(lambda p, a, n: self.grade(tokenizer, mask, p, a, n), len(mask))
