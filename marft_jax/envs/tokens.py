"""A JAX-native token task for tiny models: agents must jointly hit a target symbol.

Every problem is a target `t` in `[0, M)` over M symbols (token ids `first_symbol + s`).
Agent i's move is the first token of its response; the team succeeds when all moves are
symbols and their sum is `t` mod M. A later agent sees the earlier agents' moves (the
dependency graph), so the last agent can always complete the sum: the task rewards
coordination along D. Everything is a JAX function, so the whole rollout is one jit and
`jax.vmap`s over seeds (tests, many-seed studies).

Token ids used: `first_symbol .. first_symbol + M - 1` symbols, then `first_symbol + M +
[0 .. A-1]` agent markers, `+A` a separator, `+A+1` / `+A+2` the judge's wrong / right
tokens. The vocabulary must hold `first_symbol + M + A + 3` ids.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from marft_jax.errors import ConfigError
from marft_jax.flexmg.game import ProblemTable
from marft_jax.flexmg.layout import ObservationLayout, Segments

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class TokenTaskConfig:
    """Sizes of the token task.

    Attributes:
        num_symbols: M, the symbol alphabet (and the modulus of the sum).
        first_symbol: token id of symbol 0 (keep it above the pad id 0).
        num_agents: A, agents of the team (for the marker tokens).
    """

    num_symbols: int = 8
    first_symbol: int = 3
    num_agents: int = 2

    @property
    def vocab_needed(self) -> int:
        return self.first_symbol + self.num_symbols + self.num_agents + 3

    def __post_init__(self):
        if self.num_symbols < 2:
            raise ConfigError("token task: field 'num_symbols' must be at least 2")
        if self.first_symbol < 1:
            raise ConfigError("token task: field 'first_symbol' must be >= 1 (0 is padding)")


def token_problems(config: TokenTaskConfig) -> ProblemTable:
    """One problem per target symbol: the problem text is the target token."""
    targets = np.arange(config.num_symbols, dtype=np.int32)
    return ProblemTable(tokens=jnp.asarray(config.first_symbol + targets)[:, None],
                        lengths=jnp.ones((config.num_symbols,), jnp.int32))


def token_layout(config: TokenTaskConfig) -> ObservationLayout:
    """Observation: [agent marker] state [other agents' moves...] [separator]."""
    base = config.first_symbol + config.num_symbols
    markers = [[base + i] for i in range(config.num_agents)]
    sep = base + config.num_agents
    empty = Segments.from_lists([[]])
    return ObservationLayout(
        prefix=Segments.from_lists(markers),
        suffix=Segments.from_lists([[sep]] * config.num_agents),
        problem_open=empty, problem_close=empty,
        hist_open=Segments.from_lists(markers), hist_close=empty,
        pred_open=Segments.from_lists(markers), pred_close=empty,
        judge=Segments.from_lists([[sep + 1], [sep + 2]]),
        style="tokens")


def token_reward_fn(config: TokenTaskConfig):
    """`reward_fn(problem_ids [E], actions [A, E, K], lengths [A, E]) -> correct [A, E]`."""

    def reward(problem_ids: Array, actions: Array, lengths: Array) -> Array:
        moves = actions[:, :, 0] - config.first_symbol  # [A, E]
        valid = (lengths > 0) & (moves >= 0) & (moves < config.num_symbols)
        total = jnp.sum(jnp.where(valid, moves, 0), axis=0) % config.num_symbols  # [E]
        success = jnp.all(valid, axis=0) & (total == problem_ids)
        return jnp.broadcast_to(success.astype(jnp.float32), actions.shape[:2])

    return reward
