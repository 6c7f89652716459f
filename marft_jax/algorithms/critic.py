"""The MARFT value head: a bias-free float32 MLP on frozen decoder features.

The critic is the reference's DeepSpeed-Chat style head, `H → 1024 → 512 → 1` with ReLUs
and no biases, on the decoder's last-layer (post-norm) hidden states. Its trunk is never
trained: the features arrive under `stop_gradient` (or precomputed), so only the head is a
parameter. Params are a plain dict pytree whose leaves carry a leading `[heads]` axis: one
head (the reference's centralised critic) or one head per agent; `head_ids [A]` maps each
agent to its head, so both layouts share one code path.

Value positions (sequences are `[obs (left-padded, O) ; action (right-padded, K)]`):
  action level: the last observation token, position `O - 1` (real under left padding);
  token level:  the value *before* action token k sits at position `O - 1 + k`, k < K (the
                reference's `get_slice`), so token 0's value equals the action-level value.
"""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
CriticParams = dict[str, Array]


def init_critic(key: Array, hidden_size: int, num_heads: int = 1,
                widths: tuple[int, ...] = (1024, 512)) -> CriticParams:
    """Randomly initialised value heads.

    Each layer is initialised like PyTorch's `nn.Linear` (uniform in ±1/√fan_in), as the
    reference's head is.

    Args:
        key: PRNG key.
        hidden_size: the trunk's feature width H.
        num_heads: 1 for a shared critic, A for per-agent heads.
        widths: hidden widths (reference: 1024, 512).

    Returns:
        `{"w0": [heads, H, widths[0]], "w1": ..., "w{n}": [heads, widths[-1], 1]}` float32.
    """
    dims = (hidden_size,) + tuple(widths) + (1,)
    keys = jax.random.split(key, len(dims) - 1)
    params = {}
    for layer, (k, fan_in, fan_out) in enumerate(zip(keys, dims[:-1], dims[1:])):
        bound = 1.0 / math.sqrt(fan_in)
        params[f"w{layer}"] = jax.random.uniform(
            k, (num_heads, fan_in, fan_out), jnp.float32, -bound, bound)
    return params


def num_layers(params: CriticParams) -> int:
    """Number of linear layers in the head."""
    return len(params)


def apply_head(params: CriticParams, features: Array) -> Array:
    """One head (leaves without the `[heads]` axis) on features `[..., H]` -> `[...]`."""
    x = features.astype(jnp.float32)
    n = num_layers(params)
    for layer in range(n):
        x = x @ params[f"w{layer}"]
        if layer < n - 1:
            x = jax.nn.relu(x)
    return x[..., 0]


def critic_values(params: CriticParams, features: Array, head_ids: Array) -> Array:
    """Values for features grouped by agent.

    Args:
        params: stacked heads, leaves `[heads, ...]`.
        features: `[A, ..., H]` trunk features, agent axis first.
        head_ids: `[A]` int32, the head each agent uses.

    Returns:
        `[A, ...]` float32 values.
    """
    chex.assert_rank(head_ids, 1)
    chex.assert_equal_shape_prefix([features, head_ids], 1)
    per_agent = jax.tree.map(lambda w: w[head_ids], params)  # leaves [A, ...]
    return jax.vmap(apply_head)(per_agent, features)


def head_ids_for(critic_heads: str, num_agents: int) -> Array:
    """`[A]` head index per agent: all 0 for a shared head, `arange(A)` per agent."""
    if critic_heads == "shared":
        return jnp.zeros((num_agents,), jnp.int32)
    return jnp.arange(num_agents, dtype=jnp.int32)


def num_heads_for(critic_heads: str, num_agents: int) -> int:
    """How many heads `init_critic` should build for the `critic_heads` layout."""
    return 1 if critic_heads == "shared" else num_agents


def value_columns(obs_len: int, num_positions: int) -> np.ndarray:
    """Columns of the value positions in `[obs (O) ; action (K)]` rows.

    Args:
        obs_len: O, the (padded) observation length.
        num_positions: 1 for the action-level value (column O - 1), K for the token-level
            values (columns O - 1 .. O + K - 2).

    Returns:
        `[num_positions]` int column indices (static); the scorer reads the trunk's
        features there under `stop_gradient` (the trunk is frozen).
    """
    return obs_len - 1 + np.arange(num_positions)
