"""A JAX-native routing task for orchestrated teams: only the right worker can solve.

Every problem is a pair (kind `c`, target `t`) with `c` in `[0, W)` (W = the roles the
orchestrator may call, in its `calls` order) and `t` in `[0, M)`; the problem text is the
two tokens `first_symbol + c`, `first_symbol + t`. The orchestrator acts first and calls
one worker with its first token (`orchestration.token_choice_router`: with C = W roles,
`(token − first_symbol) mod (W + 1)` picks worker 0..W−1, or says done). The called
worker's move is its first token, read as the symbol `(token − first_symbol) mod M`. The
team succeeds when the called worker is the specialist of the problem's kind (worker `c`)
and its move is `t`: a non-specialist's answer is never accepted. So success needs the
orchestrator to route by kind (a kind-blind router succeeds on at most 1 / W of the
problems) and the specialist to answer by target. Chance: 1 / (W + 1) × 1 / M.

The observation layout is the token task's (`envs.tokens.token_layout`); everything is
JAX, so the whole rollout is one jit and seeds vmap.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from marft_jax.envs.tokens import TokenTaskConfig
from marft_jax.errors import ConfigError
from marft_jax.flexmg.game import ProblemTable
from marft_jax.flexmg.orchestration import Router, token_choice_router
from marft_jax.flexmg.profiles import Team

Array = jax.Array


def route_workers(team: Team) -> tuple[int, ...]:
    """The workers (profile indices) in the orchestrator's `calls` order; ConfigError naming
    `team.profiles` unless the team is orchestrated."""
    if team.orchestrator is None:
        raise ConfigError(f"config field 'team.profiles': the route task needs an "
                          f"orchestrated team (a profile with 'calls'); {team.source} has "
                          "none (e.g. team.profiles=token_route)")
    return tuple(team.roles.index(role) for role in team.profiles[team.orchestrator].calls)


def route_problems(config: TokenTaskConfig, num_workers: int) -> ProblemTable:
    """All W × M (kind, target) pairs; problem id = kind · M + target."""
    m = config.num_symbols
    ids = np.arange(num_workers * m, dtype=np.int32)
    tokens = np.stack([ids // m, ids % m], axis=1) + config.first_symbol  # [P, 2]
    return ProblemTable(tokens=jnp.asarray(tokens, jnp.int32),
                        lengths=jnp.full((len(ids),), 2, jnp.int32))


def route_reward_fn(config: TokenTaskConfig, team: Team):
    """`reward_fn(problem_ids [E], actions [A, E, K], lengths [A, E]) -> correct [A, E]`:
    1 for the worker that acted, is the specialist of the problem's kind and hit the
    target; 0 for everyone else."""
    workers = route_workers(team)
    m = config.num_symbols
    kind_of = np.full((team.num_agents,), -1, np.int32)  # [A] the kind each agent solves
    kind_of[list(workers)] = np.arange(len(workers))

    def reward(problem_ids: Array, actions: Array, lengths: Array) -> Array:
        kind, target = problem_ids // m, problem_ids % m  # [E]
        moves = jnp.mod(actions[:, :, 0] - config.first_symbol, m)  # [A, E]
        specialist = jnp.asarray(kind_of)[:, None] == kind[None, :]  # [A, E]
        hit = (lengths > 0) & specialist & (moves == target[None, :])
        return hit.astype(jnp.float32)

    return reward


def route_router(config: TokenTaskConfig, team: Team) -> Router:
    """The orchestrator's JAX-native choice (see the module docstring)."""
    route_workers(team)
    return token_choice_router(team, config.first_symbol)
