"""Scoring a heterogeneous team's trajectory: each agent on its own base model.

`graphdef`, `base` and `lora` are tuples with one entry per base; `groups`
(`training.bases.BaseGroups`, static) says which agents sit on which base. Each base
scores its own agents' rows (their observations and actions are in its tokens) with its
own parameters; the results are put back in profile order. The critic reads one base
(`groups.critic_base`) on the observations the rollout assembled in that base's tokens
(`Trajectory.critic_obs_tokens`), adapters off (the "base" trunk), action level.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from marft_jax.algorithms import scoring
from marft_jax.algorithms.scoring import Scores
from marft_jax.models.layers import BASE_ADAPTER

Array = jax.Array


def score_actions(groups, graphdef, base, lora, obs_tokens: Array, obs_mask: Array,
                  action_tokens: Array, action_mask: Array, adapter_ids: Array | int, *,
                  remat: str = "none", head_chunk: int = 0) -> Scores:
    """`scoring.score_actions` with each agent on its base (no critic features).

    Args:
        groups: the team's `BaseGroups`.
        graphdef, base, lora: per-base tuples.
        obs_tokens, obs_mask: `[R, A, E, O]`, agent i's rows in its base's tokens.
        action_tokens, action_mask: `[R, A, E, K]`.
        adapter_ids: `[A]` adapter of each agent (the team's adapter axis, which every
            base's LoRA stack shares), or a scalar (< 0: adapters off).
        remat, head_chunk: see `scoring.score_actions`.

    Returns:
        `Scores` with `[R, A, E, K]` leaves in profile order, `features` None.
    """
    ids = jnp.asarray(adapter_ids, jnp.int32)
    logprobs, entropies, order = [], [], []
    for b in range(groups.num_bases):
        agents = np.asarray(groups.agents(b))
        s = scoring.score_actions(
            graphdef[b], base[b], lora[b], obs_tokens[:, agents], obs_mask[:, agents],
            action_tokens[:, agents], action_mask[:, agents],
            ids if ids.ndim == 0 else ids[agents], num_value_positions=None, remat=remat,
            head_chunk=head_chunk)
        logprobs.append(s.token_logprobs)
        entropies.append(s.entropy)
        order.extend(agents.tolist())
    back = np.argsort(np.asarray(order))  # concatenated agent axis -> profile order
    join = lambda parts: jnp.concatenate(parts, axis=1)[:, back]
    return Scores(token_logprobs=join(logprobs), entropy=join(entropies), features=None)


def critic_features(groups, graphdef, base, lora, critic_obs_tokens: Array,
                    critic_obs_mask: Array) -> Array:
    """`[R, A, E, 1, H]` the critic base's features at the last observation token of every
    decision (the action-level value position), adapters off, stop-gradient."""
    c = groups.critic_base
    r, a, e, o = critic_obs_tokens.shape
    feats = scoring.observation_features(graphdef[c], base[c], lora[c],
                                         critic_obs_tokens.reshape(-1, o),
                                         critic_obs_mask.reshape(-1, o), BASE_ADAPTER)
    return feats.reshape(r, a, e, 1, -1)


def bootstrap_features(groups, graphdef, base, lora, next_obs_tokens: Array,
                       next_obs_mask: Array) -> Array:
    """`[E, H]` the critic base's features of the bootstrap observation (adapters off)."""
    c = groups.critic_base
    return scoring.observation_features(graphdef[c], base[c], lora[c], next_obs_tokens,
                                        next_obs_mask, BASE_ADAPTER)
