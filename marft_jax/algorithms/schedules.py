"""Training schedules as masks computed from traced step counters (never Python branches).

The clock is the number of environment samples consumed so far (rounds × envs per update,
counted *including* the current update, as the reference's `total_num_steps`), so switching
agents or leaving the critic warm-up never recompiles the update.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def in_critic_warmup(samples: Array, warmup_samples: int) -> Array:
    """Scalar bool: only the critic trains while `samples < warmup_samples`."""
    return jnp.asarray(samples) < warmup_samples


def scheduled_agents(samples: Array, interval: int, order: tuple[int, ...]) -> Array:
    """`[A]` bool: which agents' policies train this update.

    With `interval == 0` every agent trains. Otherwise one agent at a time, in decision
    order: agent `order[(samples // interval) % A]` (the reference's MARFT-A schedule).
    """
    num_agents = len(order)
    if interval == 0:
        return jnp.ones((num_agents,), bool)
    slot = (jnp.asarray(samples, jnp.int32) // interval) % num_agents
    agent = jnp.asarray(order, jnp.int32)[slot]
    return jnp.arange(num_agents) == agent


def agents_to_adapters(values: Array, adapter_ids: Array, num_adapters: int) -> Array:
    """Sums per-agent `[A, ...]` values into their adapters -> `[num_adapters, ...]`.

    A scatter-add, not a one-hot product: a NaN of one agent stays in its own adapter.
    """
    return jax.ops.segment_sum(values.astype(jnp.float32), adapter_ids,
                               num_segments=num_adapters)


def adapter_mask(agent_mask: Array, adapter_ids: Array, num_adapters: int) -> Array:
    """`[num_adapters]` bool: adapters used by at least one agent in `agent_mask [A]`."""
    return agents_to_adapters(agent_mask.astype(jnp.float32), adapter_ids, num_adapters) > 0
