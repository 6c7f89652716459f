"""From a Trajectory to training data: old values, bootstrap, old log-probs, advantages.

Runs once per update, before the epochs, in env chunks (`lax.map`) so its memory stays at
one micro-batch's forward. The critic's trunk is frozen, so with the "base" trunk its
features are computed here once and reused by every epoch (the reference recomputes them
every minibatch); with the "shared" trunk they come from each training forward instead,
and the old action-level values read the features the sampler's prefill left in the
trajectory (`Trajectory.obs_features`), so no pass over the observations runs here.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import struct

from marft_jax.algorithms import advantages as adv_lib
from marft_jax.algorithms import critic as critic_lib
from marft_jax.algorithms import multibase, scoring
from marft_jax.algorithms.advantages import CreditOrder
from marft_jax.algorithms.config import PPOConfig
from marft_jax.flexmg.trajectory import Trajectory
from marft_jax.models.layers import BASE_ADAPTER

Array = jax.Array


@struct.dataclass
class Batch:
    """Training data of one update; every leaf has the env axis at position 2.

    Attributes:
        obs_tokens, obs_mask: `[R, A, E, O]`.
        action_tokens, action_mask: `[R, A, E, K]`.
        old_logprobs: `[R, A, E, K]` PPO's old per-token log-probs.
        advantages: `[R, A, E]` (action level) or `[R, A, E, K]` (token level).
        valid: like `advantages`, bool: decisions with an action token / real tokens.
        returns, old_values: like `advantages`, or None without a critic.
        base_features: `[R, A, E, P, H]` frozen critic features ("base" trunk) or None.
        ref_logprobs: `[R, A, E, K]` base-policy log-probs (KL penalty) or None.
        word_counts: `[R, A, E]` words per action ("word" normalisation) or None.
    """

    obs_tokens: Array
    obs_mask: Array
    action_tokens: Array
    action_mask: Array
    old_logprobs: Array
    advantages: Array
    valid: Array
    returns: Array | None
    old_values: Array | None
    base_features: Array | None
    ref_logprobs: Array | None
    word_counts: Array | None


def value_positions(config: PPOConfig, num_tokens: int) -> int:
    """P: 1 value per decision (action level) or one per action token (token level)."""
    return 1 if config.spec.level == "action" else num_tokens


def evaluate_values(critic: dict[str, Array], features: Array, head_ids: Array,
                    level: str) -> Array:
    """Values from features `[R, A, E, P, H]` -> `[R, A, E]` (action) / `[R, A, E, P]`."""
    values = critic_lib.critic_values(critic, jnp.swapaxes(features, 0, 1), head_ids)
    values = jnp.swapaxes(values, 0, 1)  # [R, A, E, P]
    return values[..., 0] if level == "action" else values


def skip_when_all_done(bootstrap_value: Callable[[], Array], dones: Array) -> Array:
    """`bootstrap_value()` (`[E]` float32), or zeros without running it when every episode
    ended in the last round (`dones [R, E]`; always so with `rollout.horizon` 1).

    Every advantage estimator reads the bootstrap value only through `1 − done` of the
    last round, so for finite values the advantages are the same bit for bit; the skipped
    forward pass over the E next observations is ~10 % of the main job's update.
    `lax.cond` runs one branch (under `vmap` it becomes a select and runs both).
    """
    return jax.lax.cond(jnp.all(dones[-1]), lambda: jnp.zeros(dones.shape[-1:], jnp.float32),
                        lambda: bootstrap_value().astype(jnp.float32))


def map_env_chunks(fn: Callable, tree, chunk: int):
    """Applies `fn` to env chunks of `[R, A, E, ...]` leaves, sequentially (`lax.map`).

    Chunk j holds envs j, j + n, j + 2n, ... (n = E / chunk): strided, so an env axis split
    over devices in blocks stays split inside every chunk (each device works on its share
    of every chunk instead of the chunks being gathered). `fn` is per env, so the grouping
    changes no result.
    """
    num_envs = jax.tree.leaves(tree)[0].shape[2]
    n = num_envs // chunk

    def split(x):  # [R, A, E, ...] -> [n, R, A, chunk, ...]
        return jnp.moveaxis(x.reshape(x.shape[:2] + (chunk, n) + x.shape[3:]), 3, 0)

    def merge(y):  # [n, R, A, chunk, ...] -> [R, A, E, ...]
        y = jnp.moveaxis(y, 0, 3)
        return y.reshape(y.shape[:2] + (chunk * n,) + y.shape[4:])

    return jax.tree.map(merge, jax.lax.map(fn, jax.tree.map(split, tree)))


def env_chunk(num_envs: int, target: int) -> int:
    """The largest divisor of `num_envs` not above `target` (≥ 1)."""
    target = max(1, min(target, num_envs))
    return max(d for d in range(1, target + 1) if num_envs % d == 0)


def prepare_batch(graphdef, config: PPOConfig, credit: CreditOrder, lora, critic, base,
                  traj: Trajectory, word_counts: Array | None, chunk: int,
                  row_width: int | None = None, groups=None, prefix=None,
                  obs_capacity: tuple[int, ...] | None = None):
    """Scores the trajectory with the pre-update parameters and computes advantages.

    Args:
        graphdef, lora, base: the split decoder (current adapters = the rollout policy).
        config: the update's configuration.
        credit: GAE bootstrap structure.
        critic: value heads (ignored by critic-free algorithms).
        traj: the rollout.
        word_counts: `[R, A, E]` or None.
        chunk: envs per pre-pass chunk (must divide E).
        row_width: compacted row width of the scoring passes (`scoring.row_width`) or None.
        groups: a heterogeneous team's `BaseGroups` (graphdef, lora, base are then per-base
            tuples; `algorithms.multibase`), or None.
        prefix: the agents' observation prefixes (`ppo.shared_prefix`: each scoring pass
            runs them once per chunk, `scoring.score_actions`), or None.
        obs_capacity: each agent's longest observation: with a prefix, each agent's rows
            are scored at their own width (`scoring.score_actions`), or None.

    Returns:
        `(Batch, stats)` with scalar statistics of advantages, returns and values.
    """
    spec = config.spec
    r, a, e, _ = traj.obs_tokens.shape
    k = traj.action_tokens.shape[-1]
    p = value_positions(config, k)
    critic_on = spec.uses_critic
    shared_trunk = critic_on and config.critic_trunk == "shared"
    base_trunk = critic_on and config.critic_trunk == "base"
    head_ids = critic_lib.head_ids_for(config.critic_heads, a)
    seqs = dict(obs_tokens=traj.obs_tokens, obs_mask=traj.obs_mask,
                action_tokens=traj.action_tokens, action_mask=traj.action_mask)
    if groups is not None:
        seqs.update(critic_obs_tokens=traj.critic_obs_tokens,
                    critic_obs_mask=traj.critic_obs_mask)
    # The action-level value on the policy's trunk reads the hidden state the sampler's
    # prefill already computed with the same adapters (same result up to float rounding).
    rollout_features = (shared_trunk and p == 1 and groups is None
                        and traj.obs_features is not None)
    if rollout_features:
        seqs.update(obs_features=traj.obs_features[..., None, :])  # [R, A, E, 1, H]

    def hetero_pass(x):  # each agent on its base; the critic on the critic base
        args = (x["obs_tokens"], x["obs_mask"], x["action_tokens"], x["action_mask"])
        out = {}
        if config.recompute_old_logprobs:
            out["old_logprobs"] = multibase.score_actions(
                groups, graphdef, base, lora, *args, traj.adapter_ids).token_logprobs
        if config.kl_coef > 0:
            out["ref_logprobs"] = multibase.score_actions(
                groups, graphdef, base, lora, *args, BASE_ADAPTER).token_logprobs
        if critic_on:
            feats = out["base_features"] = multibase.critic_features(
                groups, graphdef, base, lora, x["critic_obs_tokens"], x["critic_obs_mask"])
            out["values"] = evaluate_values(critic, feats, head_ids, spec.level)
        return out

    def chunk_pass(x):
        if groups is not None:
            return hetero_pass(x)
        args = (x["obs_tokens"], x["obs_mask"], x["action_tokens"], x["action_mask"])
        out, feats = {}, None
        if config.recompute_old_logprobs:
            s = scoring.score_actions(graphdef, base, lora, *args, traj.adapter_ids,
                                      num_value_positions=p if shared_trunk else None,
                                      row_width=row_width, prefix=prefix,
                                      obs_capacity=obs_capacity)
            out["old_logprobs"], feats = s.token_logprobs, s.features
        elif rollout_features:
            feats = x["obs_features"]
        elif shared_trunk:
            feats = scoring.trunk_features(graphdef, base, lora, *args, traj.adapter_ids, p,
                                           row_width, prefix, obs_capacity)
        if config.kl_coef > 0:
            s = scoring.score_actions(graphdef, base, lora, *args, BASE_ADAPTER,
                                      num_value_positions=p if base_trunk else None,
                                      row_width=row_width, prefix=prefix,
                                      obs_capacity=obs_capacity)
            out["ref_logprobs"] = s.token_logprobs
            if base_trunk:
                feats = out["base_features"] = s.features
        elif base_trunk:
            feats = out["base_features"] = scoring.trunk_features(
                graphdef, base, lora, *args, BASE_ADAPTER, p, row_width, prefix, obs_capacity)
        if critic_on:
            out["values"] = evaluate_values(critic, feats, head_ids, spec.level)
        return out

    scored = map_env_chunks(chunk_pass, seqs, chunk) if (critic_on or config.kl_coef > 0
                                                         or config.recompute_old_logprobs) else {}
    bootstrap = None
    if critic_on:
        first = credit.order[0]
        trunk_id = BASE_ADAPTER if base_trunk else traj.adapter_ids[first]

        def bootstrap_value() -> Array:  # [E]
            if groups is None:
                feats = scoring.observation_features(graphdef, base, lora,
                                                     traj.next_obs_tokens,
                                                     traj.next_obs_mask, trunk_id)  # [E, H]
            else:
                feats = multibase.bootstrap_features(groups, graphdef, base, lora,
                                                     traj.next_obs_tokens, traj.next_obs_mask)
            head = jax.tree.map(lambda w: w[head_ids[first]], critic)
            return critic_lib.apply_head(head, feats)

        bootstrap = skip_when_all_done(bootstrap_value, traj.dones)

    rewards = adv_lib.REWARD_TRANSFORMS[spec.reward_transform](traj.rewards, config)
    values = scored.get("values")
    inputs = adv_lib.AdvantageInputs(values=values, bootstrap_value=bootstrap, rewards=rewards,
                                     dones=traj.dones, action_mask=traj.action_mask)
    advantages, returns = adv_lib.ADVANTAGE_ESTIMATORS[spec.advantage](inputs, credit, config)
    mask = traj.action_mask.astype(bool)
    valid = jnp.any(mask, axis=-1) if spec.level == "action" else mask
    stats = _stats(advantages, returns, values, valid)
    if config.advantage_norm == "batch":
        advantages = adv_lib.normalize_advantages(advantages, valid, config.advantage_norm_eps)
    batch = Batch(
        obs_tokens=traj.obs_tokens, obs_mask=traj.obs_mask, action_tokens=traj.action_tokens,
        action_mask=mask, old_logprobs=scored.get("old_logprobs", traj.policy_logprobs),
        advantages=advantages, valid=valid, returns=returns, old_values=values,
        base_features=scored.get("base_features"), ref_logprobs=scored.get("ref_logprobs"),
        word_counts=word_counts)
    return batch, stats


def _stats(advantages, returns, values, valid) -> dict[str, Array]:
    """Masked means and the advantage standard deviation (before normalisation)."""
    count = jnp.maximum(jnp.sum(valid), 1)
    mean = lambda x: jnp.sum(jnp.where(valid, x, 0.0)) / count
    adv_mean = mean(advantages)
    stats = {"advantage_mean": adv_mean,
             "advantage_std": jnp.sqrt(mean(jnp.square(advantages - adv_mean)))}
    if returns is not None:
        stats["return_mean"] = mean(returns)
        stats["value_mean"] = mean(values)
    return stats
