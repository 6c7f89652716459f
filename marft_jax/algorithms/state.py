"""`TrainState`: everything an update changes, as one pytree."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from marft_jax.algorithms import critic as critic_lib
from marft_jax.algorithms import optim
from marft_jax.algorithms.config import PPOConfig
from marft_jax.algorithms.guard import StepCounters

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
        counters: optimiser steps applied and skipped since the start of the run.
    """

    lora: Any
    critic: dict[str, Array]
    actor_opt: Any
    critic_opt: Any
    step: Array
    samples: Array
    counters: StepCounters


def init_train_state(config: PPOConfig, lora, critic: dict[str, Array]) -> TrainState:
    """A fresh state around given adapters and value heads (zero counters)."""
    num = optim.num_adapters(lora)
    zero = jnp.zeros((), jnp.int32)
    return TrainState(
        lora=lora, critic=critic,
        actor_opt=optim.init_actor(optim.actor_optimizer(config), lora),
        critic_opt=optim.critic_optimizer(config).init(critic),
        step=zero, samples=zero, counters=StepCounters.zeros(num))


def create_train_state(config: PPOConfig, lora, key: Array, hidden_size: int,
                       num_agents: int) -> TrainState:
    """A fresh state with value heads laid out as `config.critic_heads` asks."""
    heads = critic_lib.num_heads_for(config.critic_heads, num_agents)
    critic = critic_lib.init_critic(key, hidden_size, heads, config.critic_hidden)
    return init_train_state(config, lora, critic)
