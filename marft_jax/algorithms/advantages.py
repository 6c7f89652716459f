"""Advantage estimators and reward transforms of MARFT, chosen by name.

Credit follows the dependency graph: a round's decisions are linearised in decision order
(`CreditOrder`), every decision bootstraps from the value of its successor decision (the
next agent of a chain in the same round, the first decision of the next wave, or the first
decision of the next round), so GAE realises the multi-agent advantage decomposition
A(s, a^{1:n}) = Σ_m A(s, a^{1:m-1}, a^m) (REFERENCE §2.1, §4.3).

Registries: `ADVANTAGE_ESTIMATORS` (name -> estimator with a common signature) and
`REWARD_TRANSFORMS` (name -> reward shaping).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import chex
import jax
import jax.numpy as jnp
from flax import struct

from marft_jax.algorithms.config import PPOConfig
from marft_jax.errors import ConfigError
from marft_jax.flexmg.graph import DependencyGraph

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class CreditOrder:
    """Static GAE bootstrap structure of one round.

    Attributes:
        order: agents (profile indices) in decision order.
        successor: per agent, the agent whose decision it bootstraps from.
        next_round: per agent, whether that decision lies in the next round (then it must
            be `order[0]`, and the round boundary's `1 - done` mask applies).
        skip_idle: decisions may be missing (an orchestrated team: an agent that is not
            called has no action). A missing decision gets advantage 0, and whoever would
            bootstrap from it bootstraps from the next decision in the order that was made
            (a later member of the same wave, a later wave, or a later round, with the
            round masks in between).
    """

    order: tuple[int, ...]
    successor: tuple[int, ...]
    next_round: tuple[bool, ...]
    skip_idle: bool = False

    def __post_init__(self):
        num = len(self.order)
        if sorted(self.order) != list(range(num)):
            raise ConfigError(f"credit order: {self.order} is not a permutation of 0..{num - 1}")
        if len(self.successor) != num or len(self.next_round) != num:
            raise ConfigError("credit order: successor and next_round need one entry per agent")
        position = {agent: p for p, agent in enumerate(self.order)}
        for agent, (succ, nxt) in enumerate(zip(self.successor, self.next_round)):
            if nxt and succ != self.order[0]:
                raise ConfigError(
                    f"credit order: agent {agent} bootstraps from agent {succ} of the next "
                    f"round; only the round's first decision (agent {self.order[0]}) can be")
            if not nxt and position[succ] <= position[agent]:
                raise ConfigError(
                    f"credit order: agent {agent} bootstraps from agent {succ}, which does "
                    f"not come later in the decision order {self.order}")

    @property
    def num_agents(self) -> int:
        return len(self.order)

    @classmethod
    def chain(cls, num_agents: int) -> CreditOrder:
        """The reference: agent i bootstraps from i + 1, the last from agent 0 next round."""
        return cls(order=tuple(range(num_agents)),
                   successor=tuple((i + 1) % num_agents for i in range(num_agents)),
                   next_round=tuple(i == num_agents - 1 for i in range(num_agents)))

    @classmethod
    def from_graph(cls, graph: DependencyGraph) -> CreditOrder:
        """From a dependency graph's waves (see `DependencyGraph.next_decision`)."""
        return cls(order=tuple(graph.order), successor=tuple(graph.bootstrap_agent),
                   next_round=tuple(graph.bootstrap_next_round), skip_idle=graph.dynamic)


def _round_boundary(credit: CreditOrder, agent: int, not_done: Array, same_round, carried):
    """`(mask, successor value, successor advantage)` for `agent`'s bootstrap."""
    if credit.next_round[agent]:
        return not_done, carried[0], carried[1]
    return jnp.ones_like(not_done), same_round[0], same_round[1]


def gae_action(values: Array, rewards: Array, dones: Array, bootstrap_value: Array,
               credit: CreditOrder, gamma: float, lam: float,
               acted: Array | None = None) -> tuple[Array, Array]:
    """Action-level GAE over the linearised decisions (MARFT-A), a reverse `lax.scan`.

    For decision i of round t with successor s (REFERENCE §4.3):
        δ = r[t,i] + γ·m·V_s − V[t,i],   A[t,i] = δ + γλ·m·A_s,
    where s is in the same round with m = 1, or is the first decision of round t + 1 with
    m = 1 − done[t]; after the last round, V_s = `bootstrap_value` and A_s = 0.

    Mask fix: the reference multiplies the *intra-round* bootstrap by `mask[t, i+1]`, which
    is the previous round's done flag, cutting the agent chain in the first round of every
    new episode. Inside a round no episode can end, so here the intra-round mask is 1; only
    the round boundary uses `1 − done[t]`.

    Args:
        values: `[R, A, E]` V[t,i] = V(s_t, a_t^{before i}), profile order on the A axis.
        rewards: `[R, A, E]`.
        dones: `[R, E]` the episode ended after round t.
        bootstrap_value: `[E]` value of the first decision of round R.
        credit: the bootstrap structure.
        gamma, lam: discount and GAE λ.
        acted: `[R, A, E]` bool, the decisions that were made; used (and required) when
            `credit.skip_idle` (see `CreditOrder`), ignored otherwise.

    Returns:
        `(advantages, returns)`, both `[R, A, E]` float32; returns = advantages + values.
    """
    if credit.skip_idle:
        return _gae_action_skipping(values, rewards, dones, bootstrap_value, credit, gamma,
                                    lam, acted)
    r, a, e = values.shape
    chex.assert_shape(rewards, (r, a, e))
    chex.assert_shape(dones, (r, e))
    chex.assert_shape(bootstrap_value, (e,))
    if credit.num_agents != a:
        raise ConfigError(f"gae: credit order has {credit.num_agents} agents, values have {a}")
    values = values.astype(jnp.float32)
    not_done = 1.0 - dones.astype(jnp.float32)

    def round_step(carried, xs):
        v, rew, nd = xs  # [A, E], [A, E], [E]
        adv = [None] * a
        for agent in reversed(credit.order):
            succ = credit.successor[agent]
            same = (v[succ], adv[succ]) if not credit.next_round[agent] else None
            m, v_next, a_next = _round_boundary(credit, agent, nd, same, carried)
            delta = rew[agent] + gamma * m * v_next - v[agent]
            adv[agent] = delta + gamma * lam * m * a_next
        adv = jnp.stack(adv)  # [A, E]
        first = credit.order[0]
        return (v[first], adv[first]), adv

    init = (bootstrap_value.astype(jnp.float32), jnp.zeros((e,), jnp.float32))
    _, advantages = jax.lax.scan(round_step, init, (values, rewards.astype(jnp.float32),
                                                    not_done), reverse=True)
    return advantages, advantages + values


def _offer(acted: Array, value: Array, adv: Array, later: tuple[Array, Array, Array]):
    """What a decision offers to whoever bootstraps from it: `(mask, value, advantage)`;
    its own value and advantage if it was made, else what the next decision in the order
    offers (`later`: the next agent of the same wave or of a later one, or the next round)."""
    m, v_next, a_next = later
    return (jnp.where(acted, 1.0, m), jnp.where(acted, value, v_next),
            jnp.where(acted, adv, a_next))


def _boundary(not_done: Array, carried):
    """The next round's offer seen from this round: its mask times `1 - done`."""
    return not_done * carried[0], carried[1], carried[2]


def _bootstrap(credit: CreditOrder, agent: int, not_done: Array, offered, carried):
    """`(mask, value, advantage)` that `agent` bootstraps from, skipping idle decisions."""
    if credit.next_round[agent]:
        return _boundary(not_done, carried)
    return offered[credit.successor[agent]]


def _next_offer(credit: CreditOrder, agent: int, not_done: Array, offered, carried):
    """The offer of the decision right after `agent` in the order (or the next round's)."""
    pos = credit.order.index(agent)
    if pos + 1 < len(credit.order):
        return offered[credit.order[pos + 1]]
    return _boundary(not_done, carried)


def _gae_action_skipping(values, rewards, dones, bootstrap_value, credit, gamma, lam, acted):
    """`gae_action` for a credit order whose decisions may be missing (`acted`)."""
    r, a, e = values.shape
    chex.assert_shape([rewards, acted], (r, a, e))
    chex.assert_shape(dones, (r, e))
    chex.assert_shape(bootstrap_value, (e,))
    values = values.astype(jnp.float32)
    not_done = 1.0 - dones.astype(jnp.float32)

    def round_step(carried, xs):
        v, rew, nd, act = xs  # [A, E], [A, E], [E], [A, E]
        adv, offered = [None] * a, [None] * a
        for agent in reversed(credit.order):
            boot = _bootstrap(credit, agent, nd, offered, carried)
            m, v_next, a_next = boot
            delta = rew[agent] + gamma * m * v_next - v[agent]
            adv[agent] = jnp.where(act[agent], delta + gamma * lam * m * a_next, 0.0)
            later = _next_offer(credit, agent, nd, offered, carried)
            offered[agent] = _offer(act[agent], v[agent], adv[agent], later)
        return offered[credit.order[0]], jnp.stack(adv)

    init = (jnp.ones((e,), jnp.float32), bootstrap_value.astype(jnp.float32),
            jnp.zeros((e,), jnp.float32))
    _, advantages = jax.lax.scan(round_step, init, (values, rewards.astype(jnp.float32),
                                                    not_done, acted.astype(bool)),
                                 reverse=True)
    return advantages, advantages + values


def gae_token(values: Array, rewards: Array, dones: Array, bootstrap_value: Array,
              action_mask: Array, credit: CreditOrder, gamma: float, lam: float,
              token_gamma: float) -> tuple[Array, Array]:
    """Token-level GAE (MARFT-T): tokens → agents → rounds, reverse `lax.scan`s.

    V[t,i,k] is the value before action token k. Per decision with L real tokens (right
    padding; the last real token is k* = max(L − 1, 0)):
        k < k*:  δ = γ_tok·V[t,i,k+1] − V[t,i,k],             A = δ + γ_tok·λ·A[t,i,k+1]
        k = k*:  δ = r[t,i] + γ·m·V_s[0] − V[t,i,k*],        A = δ + γλ·m·A_s[0]
    with the successor s and its mask m as in `gae_action` (including its mask fix), V_s[0]
    and A_s[0] the successor's first-token value and advantage, and `token_gamma` = γ_tok
    (the reference uses γ; POAD/BAD use 1). Positions past k* get advantage and return 0.

    Args:
        values: `[R, A, E, K]`.
        rewards: `[R, A, E]`, credited at each decision's last real token.
        dones: `[R, E]`.
        bootstrap_value: `[E]` value before token 0 of the first decision of round R.
        action_mask: `[R, A, E, K]` bool, right-padded.
        credit, gamma, lam: as in `gae_action`.
        token_gamma: discount between tokens of one action.

    Returns:
        `(advantages, returns)`, both `[R, A, E, K]` float32, zero past the last token.
    """
    r, a, e, k = values.shape
    chex.assert_shape(action_mask, (r, a, e, k))
    chex.assert_shape(rewards, (r, a, e))
    chex.assert_shape(dones, (r, e))
    chex.assert_shape(bootstrap_value, (e,))
    values = values.astype(jnp.float32)
    last = jnp.maximum(jnp.sum(action_mask, axis=-1) - 1, 0)  # [R, A, E]
    not_done = 1.0 - dones.astype(jnp.float32)
    ks = jnp.arange(k)

    def decision(v, rew, last_k, m, v_next, a_next):
        """One decision's token scan: v `[E, K]`, the rest `[E]` -> advantages `[E, K]`."""
        v_after = jnp.concatenate([v[:, 1:], jnp.zeros((e, 1), v.dtype)], axis=1)
        tail = rew + gamma * m * v_next - v[jnp.arange(e), last_k] + gamma * lam * m * a_next

        def token_step(g, xs):
            kk, v_k, v_k1 = xs  # scalar, [E], [E]
            inner = token_gamma * v_k1 - v_k + token_gamma * lam * g
            g = jnp.where(kk == last_k, tail, jnp.where(kk < last_k, inner, g))
            return g, jnp.where(kk <= last_k, g, 0.0)

        _, adv = jax.lax.scan(token_step, jnp.zeros((e,), jnp.float32),
                              (ks, v.T, v_after.T), reverse=True)
        return adv.T  # [E, K]

    def round_step(carried, xs):
        v, rew, last_k, nd = xs  # [A, E, K], [A, E], [A, E], [E]
        adv = [None] * a
        for agent in reversed(credit.order):
            succ = credit.successor[agent]
            same = (v[succ, :, 0], adv[succ][:, 0]) if not credit.next_round[agent] else None
            m, v_next, a_next = _round_boundary(credit, agent, nd, same, carried)
            adv[agent] = decision(v[agent], rew[agent], last_k[agent], m, v_next, a_next)
        adv = jnp.stack(adv)  # [A, E, K]
        first = credit.order[0]
        return (v[first, :, 0], adv[first, :, 0]), adv

    def round_step_skipping(carried, xs):  # credit.skip_idle: see `_gae_action_skipping`
        v, rew, last_k, nd, act = xs  # ..., [A, E] bool
        adv, offered = [None] * a, [None] * a
        for agent in reversed(credit.order):
            boot = _bootstrap(credit, agent, nd, offered, carried)
            d = decision(v[agent], rew[agent], last_k[agent], *boot)
            adv[agent] = jnp.where(act[agent][:, None], d, 0.0)
            later = _next_offer(credit, agent, nd, offered, carried)
            offered[agent] = _offer(act[agent], v[agent, :, 0], adv[agent][:, 0], later)
        return offered[credit.order[0]], jnp.stack(adv)

    if credit.skip_idle:
        init = (jnp.ones((e,), jnp.float32), bootstrap_value.astype(jnp.float32),
                jnp.zeros((e,), jnp.float32))
        acted = jnp.any(action_mask, axis=-1)  # [R, A, E]
        _, advantages = jax.lax.scan(
            round_step_skipping, init,
            (values, rewards.astype(jnp.float32), last, not_done, acted), reverse=True)
        valid = ks <= last[..., None]
        valid = valid & acted[..., None]
        return advantages, jnp.where(valid, advantages + values, 0.0)
    init = (bootstrap_value.astype(jnp.float32), jnp.zeros((e,), jnp.float32))
    _, advantages = jax.lax.scan(
        round_step, init, (values, rewards.astype(jnp.float32), last, not_done), reverse=True)
    valid = ks <= last[..., None]  # [R, A, E, K]
    return advantages, jnp.where(valid, advantages + values, 0.0)


def group_normalize(x: Array, group_size: int, eps: float,
                    valid: Array | None = None) -> Array:
    """Group-relative scores along the env axis (last): `(x − mean_g) / (std_g + eps)`.

    Envs `[E]` are grouped as `[E // G, G]` (consecutive envs = G samples of one problem);
    std is the population standard deviation (a group of one gets advantage 0). With
    `valid` (like `x`, bool: the decisions made), the statistics are over the valid members
    of each group only, and invalid entries become 0.
    """
    e = x.shape[-1]
    if e % group_size:  # the contract; `training.config.finalize` checks ppo.group_size
        raise ConfigError(f"config field 'ppo.group_size': {e} envs do not split into "
                          f"groups of {group_size}")
    split = lambda y: y.reshape(y.shape[:-1] + (e // group_size, group_size))
    grouped = split(x)
    if valid is None:
        mean = jnp.mean(grouped, axis=-1, keepdims=True)
        std = jnp.std(grouped, axis=-1, keepdims=True)
        return ((grouped - mean) / (std + eps)).reshape(x.shape)
    ok = split(valid.astype(bool))
    count = jnp.maximum(jnp.sum(ok, axis=-1, keepdims=True), 1)
    mean = jnp.sum(jnp.where(ok, grouped, 0.0), axis=-1, keepdims=True) / count
    var = jnp.sum(jnp.where(ok, jnp.square(grouped - mean), 0.0), axis=-1,
                  keepdims=True) / count
    return jnp.where(ok, (grouped - mean) / (jnp.sqrt(var) + eps), 0.0).reshape(x.shape)


def grpo_advantages(rewards: Array, dones: Array, credit: CreditOrder, gamma: float,
                    group_size: int, eps: float, acted: Array | None = None) -> Array:
    """Critic-free, group-relative advantages `[R, A, E]` (GRPO for a LaMAS).

    Each decision's Monte-Carlo return-to-go along the credit order (GAE with V = 0, λ = 1,
    no bootstrap past the buffer) is normalised across the G samples of its problem, per
    round and agent. The rollout must run the G samples of a group in lockstep (same problem,
    same rounds); with one round and the reward in the last slot this is the usual
    `(r − mean_group) / (std_group + eps)` for every agent. `acted`: see `gae_action`.
    """
    zeros = jnp.zeros(rewards.shape, jnp.float32)
    returns, _ = gae_action(zeros, rewards, dones, zeros[0, 0], credit, gamma, 1.0, acted)
    return group_normalize(returns, group_size, eps, acted)


def normalize_advantages(advantages: Array, valid: Array, eps: float = 1e-8) -> Array:
    """Standardises advantages over the entries where `valid` is True; the rest become 0.

    The validity mask is explicit: a genuine zero advantage counts in the statistics
    (the reference treated zeros as padding, REFERENCE §9.12). Non-finite entries are left
    out of the statistics and stay non-finite, so one agent's NaN reaches only its own
    loss (where the update's guard skips it), not every agent's through the mean.
    """
    chex.assert_equal_shape([advantages, valid])
    valid = valid.astype(bool)
    stat = valid & jnp.isfinite(advantages)
    count = jnp.maximum(jnp.sum(stat), 1)
    mean = jnp.sum(jnp.where(stat, advantages, 0.0)) / count
    var = jnp.sum(jnp.where(stat, jnp.square(advantages - mean), 0.0)) / count
    return jnp.where(valid, (advantages - mean) / (jnp.sqrt(var) + eps), 0.0)


def ippo_rewards(rewards: Array, own_weight: float = 0.5) -> Array:
    """IPPO / MAPoRL baseline shaping: `w · own + (1 − w) · team mean` over agents.

    Args:
        rewards: `[R, A, E]` each agent's own reward.
        own_weight: w (reference baseline: 0.5).
    """
    chex.assert_rank(rewards, 3)
    team = jnp.mean(rewards, axis=1, keepdims=True)
    return own_weight * rewards + (1.0 - own_weight) * team


@struct.dataclass
class AdvantageInputs:
    """What every estimator may read.

    Attributes:
        values: `[R, A, E]` (action level), `[R, A, E, K]` (token level) or None.
        bootstrap_value: `[E]` or None.
        rewards: `[R, A, E]` after the reward transform.
        dones: `[R, E]`.
        action_mask: `[R, A, E, K]`.
    """

    values: Array | None
    bootstrap_value: Array | None
    rewards: Array
    dones: Array
    action_mask: Array


Estimator = Callable[[AdvantageInputs, CreditOrder, PPOConfig], tuple[Array, Array | None]]


def _acted(x: AdvantageInputs, credit: CreditOrder) -> Array | None:
    """`[R, A, E]` decisions made (an action token), where the credit order skips idle ones."""
    return jnp.any(x.action_mask, axis=-1) if credit.skip_idle else None


def _gae_action(x: AdvantageInputs, credit: CreditOrder, cfg: PPOConfig):
    return gae_action(x.values, x.rewards, x.dones, x.bootstrap_value, credit, cfg.gamma,
                      cfg.lam, _acted(x, credit))


def _gae_token(x: AdvantageInputs, credit: CreditOrder, cfg: PPOConfig):
    return gae_token(x.values, x.rewards, x.dones, x.bootstrap_value, x.action_mask, credit,
                     cfg.gamma, cfg.lam, cfg.discount_between_tokens)


def _grpo(x: AdvantageInputs, credit: CreditOrder, cfg: PPOConfig):
    adv = grpo_advantages(x.rewards, x.dones, credit, cfg.gamma, cfg.group_size, cfg.grpo_eps,
                          _acted(x, credit))
    return adv, None


ADVANTAGE_ESTIMATORS: dict[str, Estimator] = {
    "gae_action": _gae_action,
    "gae_token": _gae_token,
    "grpo": _grpo,
}

REWARD_TRANSFORMS: dict[str, Callable[[Array, PPOConfig], Array]] = {
    "none": lambda rewards, cfg: rewards,
    "ippo": lambda rewards, cfg: ippo_rewards(rewards, cfg.ippo_own_weight),
}
