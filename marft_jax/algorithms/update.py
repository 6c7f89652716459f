"""The MARFT update as one jitted function: `update(state, base, trajectory, key)`.

Inside one jit: score the trajectory with the pre-update parameters and compute advantages
(`batch.prepare_batch`); then `lax.scan` over epochs × minibatches (minibatches split the
env axis with a key-derived permutation; each minibatch accumulates gradients over
micro-batches with a second scan); per minibatch one policy + value objective, whose
gradient w.r.t. `(lora, critic)` (never `base`) drives the per-adapter and critic optimiser
steps. Which adapters step is a mask built from traced counters and values
(`guard.guard_steps`):

    apply[adapter] = scheduled (agent rotation) ∧ ¬ critic warm-up
                     ∧ approx-KL ≤ target_kl ∧ finite(loss, gradient) ∧ nonzero advantage

so no schedule or guard is a Python branch and the update compiles once.

Per-agent policy objective (`objective`, a pure function of one micro-batch): each agent's
mean surrogate over its own decisions (tokens), summed over agents, so an adapter's
gradient is its agent's mean (the reference divides by the number of agents too when all
agents train; with per-agent Adam that only matters through the gradient clip). The critic
minimises the mean value loss over all decisions.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from marft_jax.algorithms import advantages as adv_lib
from marft_jax.algorithms import batch as batch_lib
from marft_jax.algorithms import critic as critic_lib
from marft_jax.algorithms import guard, losses, multibase, optim, schedules, scoring
from marft_jax.algorithms.advantages import CreditOrder
from marft_jax.algorithms.batch import Batch
from marft_jax.algorithms.config import ALGORITHMS, AlgorithmSpec, PPOConfig
from marft_jax.algorithms.state import TrainState
from marft_jax.errors import ConfigError
from marft_jax.flexmg.graph import DependencyGraph
from marft_jax.flexmg.trajectory import Trajectory

Array = jax.Array

__all__ = ["ALGORITHMS", "AlgorithmSpec", "PPOConfig", "TrainState", "make_update",
           "objective", "policy_objective"]


def _credit_for(graph: CreditOrder | DependencyGraph | None, num_agents: int) -> CreditOrder:
    if graph is None:
        return CreditOrder.chain(num_agents)
    credit = graph if isinstance(graph, CreditOrder) else CreditOrder.from_graph(graph)
    if credit.num_agents != num_agents:
        raise ConfigError(f"update: the graph has {credit.num_agents} agents, the trajectory "
                          f"{num_agents}")
    return credit


def _sizes(config: PPOConfig, num_envs: int) -> tuple[int, int]:
    """`(envs per minibatch, envs per micro-batch)`; remainders are dropped."""
    per_minibatch = num_envs // config.num_minibatches
    per_micro = per_minibatch // config.grad_accum_steps
    if per_micro < 1:
        raise ConfigError(
            f"ppo config: {num_envs} envs cannot fill num_minibatches={config.num_minibatches}"
            f" × grad_accum_steps={config.grad_accum_steps} micro-batches")
    return per_micro * config.grad_accum_steps, per_micro


def _take_envs(tree, index: Array):
    return jax.tree.map(lambda x: jnp.take(x, index, axis=2), tree)


def _micro_split(tree, steps: int):
    """`[R, A, E_mb, ...]` leaves -> `[steps, R, A, E_mb // steps, ...]`.

    Micro-batch j holds envs j, j + steps, ... (strided), so an env axis split over devices
    stays split inside every micro-batch; the gradient is a sum over them either way.
    """
    def split(x):
        shape = x.shape[:2] + (x.shape[2] // steps, steps) + x.shape[3:]
        return jnp.moveaxis(x.reshape(shape), 3, 0)
    return jax.tree.map(split, tree)


def policy_objective(terms: losses.PolicyTerms, config: PPOConfig) -> Array:
    """`[A]` each agent's summed policy objective: surrogate loss − entropy bonus + KL
    penalty (sums over its decisions; divide by their count for the mean)."""
    return terms.loss - config.entropy_coef * terms.entropy + config.kl_coef * terms.kl_ref


def zero_terms(num_agents: int) -> tuple[losses.PolicyTerms, losses.ValueTerms]:
    """All-zero `(PolicyTerms, ValueTerms)` sums, `[A]` leaves (accumulators)."""
    zeros = jnp.zeros((num_agents,))
    return losses.PolicyTerms(*([zeros] * 6)), losses.ValueTerms(zeros, zeros)


def objective(graphdef, config: PPOConfig, params, ctx, micro: Batch, policy_count: Array,
              value_count: Array, groups=None, *, row_width: int | None = None,
              prefix=None, obs_capacity: tuple[int, ...] | None = None
              ) -> tuple[Array, tuple[losses.PolicyTerms, losses.ValueTerms]]:
    """The MARFT objective of one micro-batch, and its per-agent sums with counts.

    Each agent contributes its policy objective divided by its decision count in the whole
    minibatch (so micro-batch gradients add up to the minibatch's), only while scheduled;
    the critic contributes `value_loss_coef` × the value loss summed over all agents and
    divided by the minibatch's decision count. Pure; `make_update` differentiates it
    w.r.t. `params`.

    Args:
        graphdef: the decoder's graph definition.
        config: the update's configuration.
        params: `(lora, critic)`, the differentiated parameters.
        ctx: `(base, adapter_ids [A], scheduled [A] bool)`.
        micro: the micro-batch, `[R, A, E_micro, ...]` leaves.
        policy_count: `[A]` decisions (or tokens) of each agent in the whole minibatch, ≥ 1.
        value_count: `[]` all decisions of the minibatch, ≥ 1.
        groups: a heterogeneous team's `BaseGroups` (graphdef, base and lora per-base
            tuples: each agent scored on its base, `algorithms.multibase`), or None.
        row_width: compacted row width of the scoring forward (`ppo.row_trim`), or None.
        prefix: the agents' observation prefixes, run once per micro-batch
            (`ppo.shared_prefix`; `scoring.score_actions`), or None.
        obs_capacity: each agent's longest observation (with a prefix: a scoring pass per
            agent at its own width, `scoring.score_actions`), or None.

    Returns:
        `(total, (policy_terms, value_terms))`: the scalar objective and the `[A]` sums of
        this micro-batch (value terms are zero without a critic).
    """
    lora, critic = params
    base, adapter_ids, scheduled = ctx
    spec = config.spec
    a = micro.obs_tokens.shape[1]
    shared_trunk = spec.uses_critic and config.critic_trunk == "shared"
    p = batch_lib.value_positions(config, micro.action_tokens.shape[-1])
    if groups is None:
        scores = scoring.score_actions(
            graphdef, base, lora, micro.obs_tokens, micro.obs_mask, micro.action_tokens,
            micro.action_mask, adapter_ids, num_value_positions=p if shared_trunk else None,
            remat=config.remat, row_width=row_width, prefix=prefix,
            obs_capacity=obs_capacity, head_chunk=config.head_chunk)
    else:
        scores = multibase.score_actions(
            groups, graphdef, base, lora, micro.obs_tokens, micro.obs_mask,
            micro.action_tokens, micro.action_mask, adapter_ids, remat=config.remat,
            head_chunk=config.head_chunk)
    terms = losses.POLICY_LOSSES[spec.policy_loss](
        scores.token_logprobs, micro.old_logprobs, micro.action_mask, micro.advantages,
        scores.entropy, config.clip_eps, config.logprob_norm, micro.word_counts,
        micro.ref_logprobs)
    per_agent = policy_objective(terms, config) / policy_count  # [A]
    total = jnp.sum(jnp.where(scheduled, per_agent, 0.0))
    vterms = zero_terms(a)[1]
    if spec.uses_critic:
        feats = scores.features if shared_trunk else micro.base_features
        head_ids = critic_lib.head_ids_for(config.critic_heads, a)
        values = batch_lib.evaluate_values(critic, feats, head_ids, spec.level)
        vterms = losses.value_terms(values, micro.old_values, micro.returns, micro.valid,
                                    config.value_clip_eps, config.huber_delta)
        total = total + config.value_loss_coef * jnp.sum(vterms.loss) / value_count
    return total, (terms, vterms)


def make_update(graphdef, config: PPOConfig,
                graph: CreditOrder | DependencyGraph | None = None,
                *, donate: bool = False, out_shardings: Any = None,
                constrain_batch: Callable | None = None,
                grad_map: Callable | None = None, groups: Any = None,
                prefix: Any = None, obs_capacity: tuple[int, ...] | None = None) -> Callable:
    """Builds the jitted update for one algorithm configuration.

    Args:
        graphdef: the decoder's graph definition (from `functional.init_model`).
        config: static configuration; `config.algorithm` picks the registry entry.
        graph: the team's dependency graph (or a `CreditOrder`); None = the reference chain.
        donate: donate the input state's buffers to the output.
        out_shardings: `jax.jit` output shardings of `(state, metrics)` (None: propagated).
        constrain_batch: applied to every minibatch and micro-batch (`Batch -> Batch`, e.g.
            a sharding constraint on the env axis); None = identity.
        grad_map: wraps the minibatch gradient `fn(params, ctx, minibatch, policy_count,
            value_count) -> (grads, (policy_terms, value_terms))`, with `params = (lora,
            critic)` and `ctx = (base, adapter_ids, scheduled)`; returned sums must be over
            the whole minibatch (`parallel.Plan.update_options` runs it under `shard_map`).
        groups: a heterogeneous team's `BaseGroups` (`graphdef` and the `base` / `lora`
            the update is called with are then per-base tuples), or None.
        prefix: the team's observation prefixes (`ObservationLayout.prefix`, host arrays;
            every observation starts with its agent's), required with
            `config.shared_prefix` and used only then.
        obs_capacity: each agent's longest observation (`RolloutConfig.agent_obs_tokens`):
            with the shared prefix every scoring pass runs each agent's rows at its own
            width (`scoring.score_actions`); None: all rows at the widest agent's.

    Returns:
        `update(state, base, trajectory, key, word_counts=None, fault=None,
        row_width=None) -> (state, metrics)`, jitted. `word_counts` `[R, A, E]` is required
        for `logprob_norm="word"`.
        `fault` (tests: fault injection) is `(loss_add, grad_add)`, two `[NA]` float arrays
        added to every minibatch's per-adapter policy loss and to every element of each
        adapter's gradient (0 = no fault; NaN / inf poison that adapter's steps); None
        (the default) compiles without it. `row_width` (static; `ppo.row_trim`, from
        `scoring.row_width` on the host) compacts the scored rows to that width; None
        scores them at full width. `metrics` is a dict
        of arrays: per agent `[A]` policy_loss, entropy, approx_kl, clip_frac, kl_ref; per
        adapter `[NA]` grad_norm, policy_steps, skipped_nonfinite, skipped_kl,
        skipped_no_signal; scalars
        value_loss, critic_grad_norm, critic_steps, critic_skipped_nonfinite, warmup,
        advantage/return/value statistics; `[A]` scheduled (the rotation mask).
    """
    if config.grad_accum_steps == 0:
        raise ConfigError("ppo config: grad_accum_steps=0 (from the memory budget) must be "
                          "resolved before the update is built (training.setup.build_setup)")
    if config.shared_prefix and (prefix is None or groups is not None):
        raise ConfigError("ppo config: field 'shared_prefix' needs the team's observation "
                          "prefixes (make_update(prefix=layout.prefix)) and one base")
    prefix = prefix if config.shared_prefix else None
    obs_capacity = obs_capacity if prefix is not None and config.agent_widths else None
    spec = config.spec
    constrain = constrain_batch or (lambda tree: tree)
    actor_tx = optim.actor_optimizer(config)
    critic_tx = optim.critic_optimizer(config)

    def update(state: TrainState, base, traj: Trajectory, key: Array,
               word_counts: Array | None = None, fault: tuple[Array, Array] | None = None,
               row_width: int | None = None):
        traj.check_shapes()
        r, a, e, _ = traj.obs_tokens.shape
        if config.logprob_norm == "word" and spec.level == "action" and word_counts is None:
            raise ConfigError("ppo config: logprob_norm='word' needs word_counts [R, A, E]")
        credit = _credit_for(graph, a)
        num_adapters = optim.num_adapters(state.lora)
        per_minibatch, per_micro = _sizes(config, e)

        batch, stats = batch_lib.prepare_batch(
            graphdef, config, credit, state.lora, state.critic, base, traj, word_counts,
            batch_lib.env_chunk(e, per_micro), row_width, groups=groups, prefix=prefix,
            obs_capacity=obs_capacity)

        samples = state.samples + r * e
        warmup = schedules.in_critic_warmup(samples, config.critic_warmup_samples)
        scheduled = schedules.scheduled_agents(samples, config.agent_iteration_interval,
                                               credit.order)  # [A]
        adapters_scheduled = schedules.adapter_mask(scheduled, traj.adapter_ids, num_adapters)
        may_step = adapters_scheduled & ~warmup  # [NA]
        to_adapter = lambda x: schedules.agents_to_adapters(x, traj.adapter_ids, num_adapters)

        grad_fn = jax.grad(functools.partial(objective, graphdef, config, groups=groups,
                                             row_width=row_width, prefix=prefix,
                                             obs_capacity=obs_capacity),
                           has_aux=True)

        def minibatch_grads(params, ctx, mb: Batch, policy_count, value_count):
            """Sums of the gradients and loss terms over the micro-batches of `mb`."""
            def micro_step(acc, micro):
                grads, terms = grad_fn(params, ctx, constrain(micro), policy_count,
                                       value_count)
                return jax.tree.map(jnp.add, acc, (grads, terms)), None

            init = (jax.tree.map(jnp.zeros_like, params), zero_terms(a))
            out, _ = jax.lax.scan(micro_step, init, _micro_split(mb, config.grad_accum_steps))
            return out

        step_grads = minibatch_grads if grad_map is None else grad_map(minibatch_grads)
        ctx = (base, traj.adapter_ids, scheduled)

        def train_step(carry, index):
            st, totals = carry
            mb = constrain(_take_envs(batch, index))
            if config.advantage_norm == "minibatch":
                mb = mb.replace(advantages=adv_lib.normalize_advantages(
                    mb.advantages, mb.valid, config.advantage_norm_eps))
            valid_count = losses.per_agent_sum(mb.valid)  # [A] decisions or tokens
            policy_count = jnp.maximum(valid_count, 1.0)
            value_count = jnp.maximum(jnp.sum(valid_count), 1.0)
            params = (st.lora, st.critic)
            grads, (terms, vterms) = step_grads(params, ctx, mb, policy_count, value_count)
            lora_grads, critic_grads = grads
            if fault is not None:
                lora_grads = jax.tree.map(
                    lambda g: g + fault[1].reshape((-1,) + (1,) * (g.ndim - 1)).astype(g.dtype),
                    lora_grads)

            norms = optim.adapter_grad_norms(lora_grads)  # [NA]
            adapter_loss = to_adapter(policy_objective(terms, config))
            if fault is not None:
                adapter_loss = adapter_loss + fault[0]
            signal = to_adapter(losses.per_agent_sum(mb.valid & (mb.advantages != 0))) > 0
            critic_norm = optax.tree.norm(critic_grads)
            checks = guard.step_checks(config, adapter_loss, norms, to_adapter(terms.approx_kl),
                                       to_adapter(terms.count), signal, vterms.loss,
                                       critic_norm)
            apply, critic_apply, counters = guard.guard_steps(may_step, checks,
                                                              spec.uses_critic)
            lora, actor_opt = optim.masked_actor_step(actor_tx, st.lora, st.actor_opt,
                                                      lora_grads, apply)
            critic, critic_opt = optim.masked_critic_step(critic_tx, st.critic, st.critic_opt,
                                                          critic_grads, critic_apply)
            st = st.replace(lora=lora, critic=critic, actor_opt=actor_opt,
                            critic_opt=critic_opt, counters=st.counters + counters)
            step_totals = _Totals(terms=terms, vterms=vterms, grad_norm=norms,
                                  critic_grad_norm=critic_norm, counters=counters)
            return (st, jax.tree.map(jnp.add, totals, step_totals)), None

        keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(config.epochs))
        perms = jax.vmap(lambda kk: jax.random.permutation(kk, e))(keys)  # [epochs, E]
        used = config.num_minibatches * per_minibatch
        indices = perms[:, :used].reshape(config.epochs * config.num_minibatches,
                                          per_minibatch)
        terms0, vterms0 = zero_terms(a)
        totals = _Totals(terms=terms0, vterms=vterms0, grad_norm=jnp.zeros((num_adapters,)),
                         critic_grad_norm=jnp.zeros(()),
                         counters=guard.StepCounters.zeros(num_adapters))
        (state, totals), _ = jax.lax.scan(train_step, (state, totals), indices)
        state = state.replace(step=state.step + 1, samples=samples)
        metrics = _metrics(totals, indices.shape[0], stats, warmup, scheduled)
        return state, metrics

    jit_options = {} if out_shardings is None else {"out_shardings": out_shardings}
    return jax.jit(update, donate_argnums=(0,) if donate else (), static_argnames="row_width",
                   **jit_options)


@struct.dataclass
class _Totals:
    """Sums over an update's minibatch steps: loss terms `[A]`, gradient norms (`[NA]`,
    `[]`) and step counters."""

    terms: losses.PolicyTerms
    vterms: losses.ValueTerms
    grad_norm: Array
    critic_grad_norm: Array
    counters: guard.StepCounters


def _metrics(totals: _Totals, num_steps: int, stats, warmup, scheduled) -> dict[str, Array]:
    """Exact means over all minibatches from the accumulated sums and counts."""
    terms, vterms = totals.terms, totals.vterms
    count = jnp.maximum(terms.count, 1.0)
    metrics = {
        "policy_loss": terms.loss / count,
        "entropy": terms.entropy / count,
        "approx_kl": terms.approx_kl / count,
        "clip_frac": terms.clip_frac / count,
        "kl_ref": terms.kl_ref / count,
        "value_loss": jnp.sum(vterms.loss) / jnp.maximum(jnp.sum(vterms.count), 1.0),
        "grad_norm": totals.grad_norm / num_steps,
        "critic_grad_norm": totals.critic_grad_norm / num_steps,
        **totals.counters.as_dict(),
        "warmup": warmup,
        "scheduled": scheduled,
    }
    metrics.update(stats)
    return metrics
