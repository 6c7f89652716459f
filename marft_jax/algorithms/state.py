"""`TrainState`: everything an update changes, as one pytree."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from marft_jax.algorithms import critic as critic_lib
from marft_jax.algorithms import optim
from marft_jax.algorithms.config import PPOConfig

Array = jax.Array


@struct.dataclass
class TrainState:
    """Trainable state of a MARFT run (the frozen base is passed separately).

    Attributes:
        lora: stacked adapters (an `nnx.State`), leaves `[NA, ...]`.
        critic: value heads, leaves `[heads, ...]` (see `critic.init_critic`).
        actor_opt: per-adapter optimiser state, leaves `[NA, ...]`.
        critic_opt: the value head's optimiser state.
        step: `[]` int32, updates done.
        samples: `[]` int32, env samples (rounds × envs) consumed: the schedules' clock.
        policy_steps: `[NA]` int32, optimiser steps applied to each adapter.
        critic_steps: `[]` int32, optimiser steps applied to the critic.
        skipped_nonfinite: `[NA]` int32, adapter steps skipped for a non-finite loss/grad.
        skipped_kl: `[NA]` int32, adapter steps skipped for approx-KL above `target_kl`.
        critic_skipped_nonfinite: `[]` int32, critic steps skipped as non-finite.
    """

    lora: Any
    critic: dict[str, Array]
    actor_opt: Any
    critic_opt: Any
    step: Array
    samples: Array
    policy_steps: Array
    critic_steps: Array
    skipped_nonfinite: Array
    skipped_kl: Array
    critic_skipped_nonfinite: Array


def init_train_state(config: PPOConfig, lora, critic: dict[str, Array]) -> TrainState:
    """A fresh state around given adapters and value heads (zero counters)."""
    num = optim.num_adapters(lora)
    zero = jnp.zeros((), jnp.int32)
    per_adapter = jnp.zeros((num,), jnp.int32)
    return TrainState(
        lora=lora, critic=critic,
        actor_opt=optim.init_actor(optim.actor_optimizer(config), lora),
        critic_opt=optim.critic_optimizer(config).init(critic),
        step=zero, samples=zero, policy_steps=per_adapter, critic_steps=zero,
        skipped_nonfinite=per_adapter, skipped_kl=per_adapter, critic_skipped_nonfinite=zero)


def create_train_state(config: PPOConfig, lora, key: Array, hidden_size: int,
                       num_agents: int) -> TrainState:
    """A fresh state with value heads laid out as `config.critic_heads` asks."""
    heads = critic_lib.num_heads_for(config.critic_heads, num_agents)
    critic = critic_lib.init_critic(key, hidden_size, heads, config.critic_hidden)
    return init_train_state(config, lora, critic)
