"""Per-agent optimisers over stacked adapters, and the critic's optimiser.

Every LoRA leaf carries a leading `[num_adapters]` axis. The actor transformation (clip by
global norm, then AdamW) is `jax.vmap`ped over that axis, so each adapter has its own
moments, its own step count and its own gradient-norm clip, as the reference's one
optimiser per agent does. Steps are *masked*: an adapter whose mask is False keeps its
parameters and moments bit for bit (agent rotation, critic warm-up, approx-KL skip,
non-finite guard). The critic (value head) has its own Adam and learning rate.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from marft_jax.algorithms.config import PPOConfig

Array = jax.Array
PyTree = Any


def actor_optimizer(config: PPOConfig) -> optax.GradientTransformation:
    """One adapter's transformation: clip by its global norm, then AdamW."""
    return optax.chain(
        optax.clip_by_global_norm(config.max_grad_norm),
        optax.adamw(config.lr_actor, eps=config.adam_eps, weight_decay=config.weight_decay))


def critic_optimizer(config: PPOConfig) -> optax.GradientTransformation:
    """The value head's transformation: clip by global norm, then Adam."""
    return optax.chain(
        optax.clip_by_global_norm(config.critic_max_grad_norm),
        optax.adam(config.lr_critic, eps=config.adam_eps))


def init_actor(tx: optax.GradientTransformation, lora: PyTree) -> PyTree:
    """Per-adapter optimiser state: every leaf gains the leading `[num_adapters]` axis."""
    return jax.vmap(tx.init)(lora)


def num_adapters(lora: PyTree) -> int:
    """The size of the leading adapter axis shared by every LoRA leaf."""
    sizes = {leaf.shape[0] for leaf in jax.tree.leaves(lora)}
    if len(sizes) != 1:
        raise ValueError(f"LoRA leaves disagree on the adapter axis: sizes {sorted(sizes)}")
    return sizes.pop()


def adapter_grad_norms(grads: PyTree) -> Array:
    """`[num_adapters]` global gradient norm of each adapter (before clipping)."""
    return jax.vmap(optax.tree.norm)(grads)


def _select(apply: Array, new: PyTree, old: PyTree) -> PyTree:
    """Per leaf, `new` where `apply` (broadcast along the leading axis), else `old`."""
    def pick(n, o):
        mask = jnp.reshape(apply, apply.shape + (1,) * (n.ndim - apply.ndim))
        return jnp.where(mask, n, o)
    return jax.tree.map(pick, new, old)


def masked_actor_step(tx: optax.GradientTransformation, lora: PyTree, opt_state: PyTree,
                      grads: PyTree, apply: Array) -> tuple[PyTree, PyTree]:
    """One vmapped optimiser step, kept only for the adapters where `apply` is True.

    Args:
        tx: the per-adapter transformation (`actor_optimizer`).
        lora: adapters, leaves `[num_adapters, ...]`.
        opt_state: from `init_actor`.
        grads: like `lora`.
        apply: `[num_adapters]` bool.

    Returns:
        `(lora, opt_state)`; unselected adapters are returned unchanged (bitwise).
    """
    updates, new_state = jax.vmap(tx.update)(grads, opt_state, lora)
    new_lora = jax.vmap(optax.apply_updates)(lora, updates)
    return _select(apply, new_lora, lora), _select(apply, new_state, opt_state)


def masked_critic_step(tx: optax.GradientTransformation, params: PyTree, opt_state: PyTree,
                       grads: PyTree, apply: Array) -> tuple[PyTree, PyTree]:
    """One critic step, kept only if the scalar `apply` is True."""
    updates, new_state = tx.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    apply = jnp.asarray(apply, bool)
    keep = lambda n, o: jnp.where(apply, n, o)
    return jax.tree.map(keep, new_params, params), jax.tree.map(keep, new_state, opt_state)
