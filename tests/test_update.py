"""The jitted MARFT update on a tiny model: schedules, guards, per-agent optimisers, learning.

Trajectories are built by hand from random tokens of the tiny vocabulary. Each distinct
configuration compiles once (module-scoped fixtures), so the file stays fast on two cores.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from marft_jax.algorithms import batch as batch_lib
from marft_jax.algorithms import critic as critic_lib
from marft_jax.algorithms import guard, losses, optim, schedules, scoring
from marft_jax.algorithms.advantages import CreditOrder
from marft_jax.algorithms.config import PPOConfig
from marft_jax.algorithms.state import create_train_state
from marft_jax.algorithms.update import make_update, objective, policy_objective
from marft_jax.errors import ConfigError
from marft_jax.flexmg.trajectory import Trajectory
from marft_jax.models import functional as F
from marft_jax.models.config import LoraConfig
from tests.conftest import tiny_config

TARGET = 7  # the token the learning test rewards


def make_trajectory(seed, rounds, agents, envs, obs_len, act_len, target_share=0.0):
    """Random left-padded observations, right-padded actions, rewards for TARGET tokens."""
    rng = np.random.default_rng(seed)
    obs = rng.integers(1, 256, (rounds, agents, envs, obs_len)).astype(np.int32)
    pads = rng.integers(0, obs_len // 2 + 1, (rounds, agents, envs))
    obs_mask = np.arange(obs_len) >= pads[..., None]
    obs = np.where(obs_mask, obs, 0)
    actions = rng.integers(1, 256, (rounds, agents, envs, act_len)).astype(np.int32)
    actions[..., 0] = np.where(rng.random((rounds, agents, envs)) < target_share, TARGET,
                               actions[..., 0])
    lengths = rng.integers(1, act_len + 1, (rounds, agents, envs))
    action_mask = np.arange(act_len) < lengths[..., None]
    actions = np.where(action_mask, actions, 0)
    rewards = (actions[..., 0] == TARGET).astype(np.float32)
    dones = rng.random((rounds, envs)) < 0.5
    dones[-1] = True
    logprobs = np.full((rounds, agents, envs, act_len), -np.log(256.0), np.float32)
    return Trajectory(
        obs_tokens=jnp.asarray(obs), obs_mask=jnp.asarray(obs_mask),
        action_tokens=jnp.asarray(actions), action_mask=jnp.asarray(action_mask),
        behaviour_logprobs=jnp.asarray(logprobs), policy_logprobs=jnp.asarray(logprobs),
        rewards=jnp.asarray(rewards), dones=jnp.asarray(dones),
        scores=jnp.asarray(rewards[:, -1]), next_obs_tokens=jnp.asarray(obs[0, 0]),
        next_obs_mask=jnp.asarray(obs_mask[0, 0]),
        adapter_ids=jnp.arange(agents, dtype=jnp.int32))


@pytest.fixture(scope="module")
def model():
    cfg = tiny_config()
    graphdef, base, lora = F.init_model(cfg, LoraConfig(num_adapters=2, rank=4, alpha=8.0),
                                        seed=0)
    return graphdef, base, lora


def _leaves(tree):
    return [np.array(x) for x in jax.tree.leaves(tree)]


def _adapter(tree, index):
    return [np.array(x[index]) for x in jax.tree.leaves(tree)]


def _same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a, b))


def _make_rescorer(graphdef):
    @jax.jit
    def rescore(base, lora, traj):
        """Fresh policy log-probs of the trajectory's actions (a new rollout's "old")."""
        r, a, e, o = traj.obs_tokens.shape
        k = traj.action_tokens.shape[-1]
        tokens = jnp.concatenate([traj.obs_tokens, traj.action_tokens], -1)
        mask = jnp.concatenate([traj.obs_mask, traj.action_mask], -1)
        ids = jnp.broadcast_to(traj.adapter_ids[None, :, None], (r, a, e)).reshape(-1)
        logits = F.sequence_logits(graphdef, base, lora, tokens.reshape(r * a * e, o + k),
                                   mask.reshape(r * a * e, o + k), ids)
        logp = jax.nn.log_softmax(logits[:, o - 1:o - 1 + k], -1)
        chosen = jnp.take_along_axis(logp, traj.action_tokens.reshape(-1, k, 1), -1)[..., 0]
        return chosen.reshape(r, a, e, k)
    return rescore


# ----------------------------------------------------------------- schedules (marft_t path)

ROTATION = PPOConfig(algorithm="marft_t", epochs=1, num_minibatches=1, grad_accum_steps=2,
                     lr_actor=1e-2, lr_critic=1e-2, critic_hidden=(32, 16),
                     critic_trunk="shared", critic_heads="per_agent", kl_coef=0.05,
                     recompute_old_logprobs=True, agent_iteration_interval=4,
                     critic_warmup_samples=5)


def test_warmup_then_agent_by_agent_rotation(model, jit_traces):
    graphdef, base, lora = model
    base_before = _leaves(base)
    traj = make_trajectory(0, rounds=1, agents=2, envs=4, obs_len=5, act_len=3)
    state = create_train_state(ROTATION, lora, jax.random.key(0), 64, 2)
    update = make_update(graphdef, ROTATION)

    # Update 1: 4 samples < 5 -> critic warm-up: adapters and their moments unchanged.
    new, metrics = update(state, base, traj, jax.random.key(1))
    assert bool(metrics["warmup"])
    assert _same(_leaves(new.lora), _leaves(state.lora))
    assert _same(_leaves(new.actor_opt), _leaves(state.actor_opt))
    assert not _same(_leaves(new.critic), _leaves(state.critic))
    np.testing.assert_array_equal(new.counters.policy_steps, [0, 0])
    assert int(new.counters.critic_steps) == 1 and int(new.samples) == 4

    # Update 2: 8 samples -> slot (8 // 4) % 2 = 0: only agent 0's adapter moves.
    state, new = new, update(new, base, traj, jax.random.key(2))[0]
    assert not _same(_adapter(new.lora, 0), _adapter(state.lora, 0))
    assert _same(_adapter(new.lora, 1), _adapter(state.lora, 1))
    assert _same(_adapter(new.actor_opt, 1), _adapter(state.actor_opt, 1))
    np.testing.assert_array_equal(new.counters.policy_steps, [1, 0])

    # Update 3: 12 samples -> slot 1: only agent 1's adapter moves.
    state, (new, metrics) = new, update(new, base, traj, jax.random.key(3))
    assert _same(_adapter(new.lora, 0), _adapter(state.lora, 0))
    assert not _same(_adapter(new.lora, 1), _adapter(state.lora, 1))
    np.testing.assert_array_equal(metrics["scheduled"], [False, True])
    np.testing.assert_array_equal(new.counters.policy_steps, [1, 1])
    assert _same(_leaves(base), base_before)
    assert all(np.all(np.isfinite(x)) for x in _leaves(new.lora) + _leaves(new.critic))
    assert jit_traces("update") == 1  # three calls, one compilation


def test_schedule_masks_follow_decision_order_and_shared_adapters():
    order = (1, 2, 0)
    got = [np.asarray(schedules.scheduled_agents(s, 10, order)) for s in (5, 10, 25, 30)]
    want = [[0, 1, 0], [0, 0, 1], [1, 0, 0], [0, 1, 0]]
    np.testing.assert_array_equal(np.array(got, int), want)
    assert np.all(np.asarray(schedules.scheduled_agents(123, 0, order)))
    adapters = schedules.adapter_mask(jnp.array([False, True, False]), jnp.array([0, 1, 1]), 2)
    np.testing.assert_array_equal(adapters, [False, True])
    summed = schedules.agents_to_adapters(jnp.array([jnp.nan, 1.0, 2.0]), jnp.array([0, 1, 1]),
                                          2)
    assert np.isnan(summed[0]) and float(summed[1]) == 3.0


# ------------------------------------------------------------ per-agent optimiser clipping


def test_gradient_clipping_is_independent_per_adapter():
    config = PPOConfig(max_grad_norm=0.5, lr_actor=1e-3)
    tx = optim.actor_optimizer(config)
    params = {"w": jnp.zeros((2, 3, 4)), "v": jnp.zeros((2, 5))}
    small = {"w": jnp.full((3, 4), 0.01), "v": jnp.full((5,), -0.02)}
    huge = jax.tree.map(lambda x: 1e6 * jnp.ones_like(x), small)
    stack = lambda a, b: jax.tree.map(lambda x, y: jnp.stack([x, y]), a, b)
    opt = optim.init_actor(tx, params)
    apply = jnp.array([True, True])
    p_huge, s_huge = optim.masked_actor_step(tx, params, opt, stack(huge, small), apply)
    p_small, _ = optim.masked_actor_step(tx, params, opt, stack(small, small), apply)
    assert _same(_adapter(p_huge, 1), _adapter(p_small, 1))
    mu = s_huge[1][0].mu  # Adam's first moment after one step: (1 − β1) · clipped gradient
    np.testing.assert_allclose(float(optax.tree.norm(jax.tree.map(lambda x: x[0], mu))),
                               0.1 * 0.5, rtol=1e-5)
    np.testing.assert_allclose(float(optax.tree.norm(jax.tree.map(lambda x: x[1], mu))),
                               0.1 * float(optax.tree.norm(small)), rtol=1e-5)
    held, held_state = optim.masked_actor_step(tx, params, opt, stack(huge, small),
                                               jnp.array([False, True]))
    assert _same(_adapter(held, 0), _adapter(params, 0))
    assert _same(_adapter(held_state, 0), _adapter(opt, 0))


# ------------------------------------------------------- marft_a: guards, learning, compiling

MARFT_A = PPOConfig(algorithm="marft_a", epochs=2, num_minibatches=2, grad_accum_steps=2,
                    lr_actor=1e-2, lr_critic=1e-3, critic_hidden=(32, 16))


@pytest.fixture(scope="module")
def marft_a_update(model):
    return make_update(model[0], MARFT_A)


def test_nan_in_one_agent_is_skipped_and_counted(model, marft_a_update):
    graphdef, base, lora = model
    traj = make_trajectory(1, rounds=1, agents=2, envs=16, obs_len=5, act_len=1,
                           target_share=0.5)
    traj = traj.replace(policy_logprobs=traj.policy_logprobs.at[:, 0].set(jnp.nan))
    state = create_train_state(MARFT_A, lora, jax.random.key(0), 64, 2)
    new, metrics = marft_a_update(state, base, traj, jax.random.key(1))
    steps = MARFT_A.epochs * MARFT_A.num_minibatches
    for leaf in _leaves(new.lora) + _leaves(new.critic) + _leaves(new.actor_opt):
        assert np.all(np.isfinite(leaf))
    assert _same(_adapter(new.lora, 0), _adapter(state.lora, 0))
    assert not _same(_adapter(new.lora, 1), _adapter(state.lora, 1))
    assert not _same(_leaves(new.critic), _leaves(state.critic))
    np.testing.assert_array_equal(new.counters.skipped_nonfinite, [steps, 0])
    np.testing.assert_array_equal(metrics["skipped_nonfinite"], [steps, 0])
    np.testing.assert_array_equal(new.counters.policy_steps, [0, steps])
    assert int(new.counters.critic_steps) == steps


@pytest.fixture(scope="module")
def faulty_update(model):
    """The update called with a `fault` argument: its own jit (another program)."""
    return make_update(model[0], MARFT_A)


@pytest.mark.parametrize("kind", ["nan_loss", "inf_grad"])
def test_injected_fault_skips_only_the_chosen_adapter(model, marft_a_update, faulty_update,
                                                      kind):
    """The `fault` argument (tests' fault injection): NaN in adapter 1's loss or +inf in
    its gradient skips exactly its steps; zeros change nothing (up to float rounding: the
    program with the argument compiles differently)."""
    graphdef, base, lora = model
    traj = make_trajectory(1, rounds=1, agents=2, envs=16, obs_len=5, act_len=1,
                           target_share=0.5)
    state = create_train_state(MARFT_A, lora, jax.random.key(0), 64, 2)
    zeros = (jnp.zeros(2), jnp.zeros(2))
    poison = jnp.array([0.0, jnp.nan if kind == "nan_loss" else jnp.inf])
    fault = (poison, zeros[1]) if kind == "nan_loss" else (zeros[0], poison)
    faulty = faulty_update
    clean, _ = marft_a_update(state, base, traj, jax.random.key(1))
    same, _ = faulty(state, base, traj, jax.random.key(1), None, zeros)
    close = lambda a, b: all(np.allclose(x, y, rtol=1e-5, atol=1e-7) for x, y in zip(a, b))
    assert close(_leaves(same.lora), _leaves(clean.lora))
    new, metrics = faulty(state, base, traj, jax.random.key(1), None, fault)
    steps = MARFT_A.epochs * MARFT_A.num_minibatches
    np.testing.assert_array_equal(metrics["skipped_nonfinite"], [0, steps])
    assert _same(_adapter(new.lora, 1), _adapter(state.lora, 1))
    assert close(_adapter(new.lora, 0), _adapter(clean.lora, 0))
    for leaf in _leaves(new.lora) + _leaves(new.actor_opt):
        assert np.all(np.isfinite(leaf))


def test_update_raises_target_logprobs_and_compiles_once(model, marft_a_update, jit_traces):
    graphdef, base, lora = model
    rescore = _make_rescorer(graphdef)
    traj = make_trajectory(2, rounds=1, agents=2, envs=16, obs_len=5, act_len=1,
                           target_share=0.5)
    is_target = np.asarray(traj.action_tokens[..., 0] == TARGET)  # [R, A, E]
    state = create_train_state(MARFT_A, lora, jax.random.key(0), 64, 2)

    def mean_logp(lora_state):
        logp = np.asarray(rescore(base, lora_state, traj))[..., 0]
        return logp[is_target].mean(), logp[~is_target].mean()

    target_before, other_before = mean_logp(state.lora)
    value_losses, first_traces = [], None
    for i in range(4):
        traj = traj.replace(policy_logprobs=rescore(base, state.lora, traj))
        state, metrics = marft_a_update(state, base, traj, jax.random.key(10 + i))
        value_losses.append(float(metrics["value_loss"]))
        if i == 0:
            first_traces = jit_traces("update")
    target_after, other_after = mean_logp(state.lora)
    assert target_after > target_before + 0.3, (target_before, target_after)
    assert other_after < other_before, (other_before, other_after)
    assert value_losses[-1] < value_losses[0], value_losses
    np.testing.assert_array_equal(state.counters.policy_steps, [16, 16])
    assert int(state.step) == 4 and int(state.samples) == 4 * 16
    # Compiled at most once (by an earlier test of the module, or by the first call here),
    # never again for the later calls.
    assert jit_traces("update") == first_traces <= 1


def test_grpo_trains_adapters_and_leaves_the_critic(model):
    graphdef, base, lora = model
    config = PPOConfig(algorithm="grpo", group_size=4, epochs=1, num_minibatches=1,
                       lr_actor=1e-2, critic_hidden=(8,), logprob_norm="token")
    traj = make_trajectory(3, rounds=1, agents=2, envs=8, obs_len=4, act_len=2,
                           target_share=0.5)
    state = create_train_state(config, lora, jax.random.key(0), 64, 2)
    new, metrics = make_update(graphdef, config)(state, base, traj, jax.random.key(1))
    assert _same(_leaves(new.critic), _leaves(state.critic))
    assert int(new.counters.critic_steps) == 0
    for index in (0, 1):
        assert not _same(_adapter(new.lora, index), _adapter(state.lora, index))
    assert np.all(np.isfinite(np.asarray(metrics["policy_loss"])))
    np.testing.assert_array_equal(metrics["skipped_no_signal"], [0, 0])


@pytest.mark.parametrize("skip", [True, False])
def test_grpo_without_reward_signal_skips_the_entropy_only_step(model, skip):
    # Every group scored the same: all advantages are 0, so the step would follow only the
    # entropy bonus (and, under Adam, at full size).
    graphdef, base, lora = model
    config = PPOConfig(algorithm="grpo", group_size=4, epochs=1, num_minibatches=2,
                       lr_actor=1e-2, critic_hidden=(8,), entropy_coef=0.01,
                       skip_no_signal=skip)
    traj = make_trajectory(3, rounds=1, agents=2, envs=8, obs_len=4, act_len=2)
    traj = traj.replace(rewards=jnp.zeros_like(traj.rewards), scores=jnp.zeros_like(traj.scores))
    state = create_train_state(config, lora, jax.random.key(0), 64, 2)
    new, metrics = make_update(graphdef, config)(state, base, traj, jax.random.key(1))
    for index in (0, 1):
        assert _same(_adapter(new.lora, index), _adapter(state.lora, index)) == skip
    np.testing.assert_array_equal(metrics["skipped_no_signal"], [2, 2] if skip else [0, 0])
    np.testing.assert_array_equal(new.counters.policy_steps, [0, 0] if skip else [2, 2])
    np.testing.assert_array_equal(new.counters.skipped_no_signal, [2, 2] if skip else [0, 0])


def test_bad_sizes_and_missing_word_counts_raise(model):
    graphdef, base, lora = model
    traj = make_trajectory(4, rounds=1, agents=2, envs=2, obs_len=4, act_len=2)
    config = PPOConfig(num_minibatches=4, critic_hidden=(8,))
    state = create_train_state(config, lora, jax.random.key(0), 64, 2)
    with pytest.raises(ConfigError, match="micro-batches"):
        make_update(graphdef, config)(state, base, traj, jax.random.key(0))
    config = PPOConfig(num_minibatches=1, logprob_norm="word", critic_hidden=(8,))
    with pytest.raises(ConfigError, match="word_counts"):
        make_update(graphdef, config)(state, base, traj, jax.random.key(0))
    with pytest.raises(ConfigError, match="algorithm"):
        PPOConfig(algorithm="appo")


def test_critic_heads_layouts():
    key = jax.random.key(0)
    shared = critic_lib.init_critic(key, 8, 1, (16, 4))
    assert [shared[f"w{i}"].shape for i in range(3)] == [(1, 8, 16), (1, 16, 4), (1, 4, 1)]
    feats = jax.random.normal(key, (3, 5, 8))  # [A, batch, H]
    values = critic_lib.critic_values(shared, feats, critic_lib.head_ids_for("shared", 3))
    one = jax.tree.map(lambda w: w[0], shared)
    np.testing.assert_allclose(values, critic_lib.apply_head(one, feats), rtol=1e-6)
    per_agent = critic_lib.init_critic(key, 8, 3, (16, 4))
    values = critic_lib.critic_values(per_agent, feats, critic_lib.head_ids_for("per_agent", 3))
    head2 = jax.tree.map(lambda w: w[2], per_agent)
    np.testing.assert_allclose(values[2], critic_lib.apply_head(head2, feats[2]), rtol=1e-6)


def test_scoring_positions_line_up_with_prefix_forwards(model):
    """Token k's log-prob and value features come from the prefix `obs ; a_<k` alone."""
    graphdef, base, lora = model
    lora = jax.tree.map(lambda x: x + 0.05, lora)  # adapters that change the logits
    traj = make_trajectory(5, rounds=1, agents=2, envs=3, obs_len=5, act_len=3)
    scores = jax.jit(lambda b, l, t: scoring.score_actions(
        graphdef, b, l, t.obs_tokens, t.obs_mask, t.action_tokens, t.action_mask,
        t.adapter_ids, num_value_positions=3))(base, lora, traj)
    obs = traj.obs_tokens.reshape(6, 5)
    obs_mask = traj.obs_mask.reshape(6, 5)
    acts = traj.action_tokens.reshape(6, 3)
    ids = jnp.repeat(traj.adapter_ids, 3)  # rows are (agent, env) with R = 1
    for k in range(2):
        tokens = jnp.concatenate([obs, acts[:, :k]], axis=1)
        mask = jnp.concatenate([obs_mask, jnp.ones((6, k), bool)], axis=1)
        logits = F.sequence_logits(graphdef, base, lora, tokens, mask, ids)[:, -1]
        want = jnp.take_along_axis(jax.nn.log_softmax(logits), acts[:, k:k + 1], -1)[:, 0]
        np.testing.assert_allclose(scores.token_logprobs[0, :, :, k].reshape(6), want,
                                   atol=1e-4)
    obs_feats = scoring.observation_features(graphdef, base, lora, obs, obs_mask, ids)
    np.testing.assert_allclose(scores.features[0, :, :, 0].reshape(6, -1), obs_feats,
                               atol=1e-4)


# ------------------------------------------------------------ the objective and the guard

def test_objective_is_the_sum_of_its_micro_batches_and_skips_unscheduled_agents(model):
    """The pure objective, called without jit: per-agent sums with counts add up over any
    split of the envs, its total is the documented combination of those sums, and an agent
    that is not scheduled gets no gradient."""
    graphdef, base, lora = model
    config = PPOConfig(algorithm="marft_a", critic_hidden=(8,), entropy_coef=0.01,
                       kl_coef=0.1, value_loss_coef=0.5)
    traj = make_trajectory(6, rounds=1, agents=2, envs=4, obs_len=5, act_len=2,
                           target_share=0.5)
    state = create_train_state(config, lora, jax.random.key(0), 64, 2)
    batch, _ = batch_lib.prepare_batch(graphdef, config, CreditOrder.chain(2), lora,
                                       state.critic, base, traj, None, 4)
    params = (lora, state.critic)
    count = losses.per_agent_sum(batch.valid)  # [A]
    policy_count, value_count = jnp.maximum(count, 1.0), jnp.maximum(jnp.sum(count), 1.0)
    ctx = (base, traj.adapter_ids, jnp.array([True, True]))
    total, (terms, vterms) = objective(graphdef, config, params, ctx, batch, policy_count,
                                       value_count)
    want = (jnp.sum(policy_objective(terms, config) / policy_count)
            + config.value_loss_coef * jnp.sum(vterms.loss) / value_count)
    np.testing.assert_allclose(total, want, rtol=1e-6)
    np.testing.assert_allclose(policy_objective(terms, config),
                               terms.loss - 0.01 * terms.entropy + 0.1 * terms.kl_ref)
    np.testing.assert_array_equal(terms.count, count)
    halves = [jax.tree.map(lambda x: x[:, :, envs], batch) for envs in (slice(0, 2),
                                                                       slice(2, 4))]
    jitted = jax.jit(objective, static_argnums=(0, 1))  # the unjitted call above is the point
    parts = [jitted(graphdef, config, params, ctx, h, policy_count, value_count)
             for h in halves]
    np.testing.assert_allclose(parts[0][0] + parts[1][0], total, rtol=1e-5)
    for got, whole in zip(jax.tree.leaves(jax.tree.map(jnp.add, parts[0][1], parts[1][1])),
                          jax.tree.leaves((terms, vterms))):
        np.testing.assert_allclose(got, whole, rtol=1e-5, atol=1e-6)

    only_first = (base, traj.adapter_ids, jnp.array([True, False]))
    grads, _ = jax.jit(jax.grad(objective, argnums=2, has_aux=True), static_argnums=(0, 1))(
        graphdef, config, params, only_first, batch, policy_count, value_count)
    lora_grads = grads[0]
    assert all(np.all(np.asarray(g[1]) == 0) for g in jax.tree.leaves(lora_grads))
    assert any(np.any(np.asarray(g[0]) != 0) for g in jax.tree.leaves(lora_grads))


def test_guard_counts_each_skip_under_its_first_failed_check():
    config = PPOConfig(critic_hidden=(8,), target_kl=0.1, skip_no_signal=True)
    # adapters: 0 fine, 1 non-finite loss, 2 KL too large, 3 no signal, 4 not scheduled
    checks = guard.step_checks(
        config, loss=jnp.array([1.0, jnp.nan, 1.0, 1.0, 1.0]),
        grad_norms=jnp.array([1.0, 1.0, 1.0, 1.0, jnp.inf]),
        approx_kl=jnp.array([0.1, 5.0, 0.9, 0.1, 0.1]), count=jnp.array([2.0] * 5),
        signal=jnp.array([True, True, True, False, True]), value_loss=jnp.ones(2),
        critic_grad_norm=jnp.array(jnp.nan))
    may_step = jnp.array([True, True, True, True, False])
    apply, critic_apply, step = guard.guard_steps(may_step, checks, uses_critic=True)
    np.testing.assert_array_equal(apply, [True, False, False, False, False])
    assert not bool(critic_apply)
    np.testing.assert_array_equal(step.skipped_nonfinite, [0, 1, 0, 0, 0])
    np.testing.assert_array_equal(step.skipped_kl, [0, 0, 1, 0, 0])
    np.testing.assert_array_equal(step.skipped_no_signal, [0, 0, 0, 1, 0])
    assert int(step.critic_steps) == 0 and int(step.critic_skipped_nonfinite) == 1
    total = guard.StepCounters.zeros(5) + step + step
    np.testing.assert_array_equal(total.policy_steps, [2, 0, 0, 0, 0])
    assert list(total.as_dict()) == ["policy_steps", "skipped_nonfinite", "skipped_kl",
                                     "skipped_no_signal", "critic_steps",
                                     "critic_skipped_nonfinite"]
    # Checks off: no target_kl, skip_no_signal false; no critic: nothing counted for it.
    off = guard.step_checks(PPOConfig(critic_hidden=(8,), skip_no_signal=False),
                            jnp.ones(2), jnp.ones(2), jnp.array([9.0, 9.0]), jnp.ones(2),
                            jnp.array([False, False]), jnp.ones(2), jnp.array(1.0))
    apply, critic_apply, step = guard.guard_steps(jnp.array([True, True]), off, False)
    np.testing.assert_array_equal(apply, [True, True])
    assert not bool(critic_apply) and int(step.critic_skipped_nonfinite) == 0


# ------------------------------------------------------------ per-row trim (ppo.row_trim)

def _wide_trajectory(seed, extra=4, **sizes):
    """`make_trajectory` with `extra` more padding columns before every observation, so
    no row's real tokens fill the `O + K` columns."""
    traj = make_trajectory(seed, **sizes)
    pad = lambda x: jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(extra, 0)])
    return traj.replace(obs_tokens=pad(traj.obs_tokens), obs_mask=pad(traj.obs_mask),
                        next_obs_tokens=pad(traj.next_obs_tokens),
                        next_obs_mask=pad(traj.next_obs_mask))


def test_compacted_rows_score_and_differentiate_like_full_rows(model):
    graphdef, base, lora = model
    lora = jax.tree.map(lambda x: x + 0.05, lora)
    traj = _wide_trajectory(11, rounds=2, agents=2, envs=3, obs_len=8, act_len=4)
    width = scoring.row_width(traj.obs_mask, traj.action_mask, multiple=2)
    assert width is not None and width <= 12 < 16
    assert scoring.row_width(traj.obs_mask, traj.action_mask) is None  # 32 > O + K

    def score(lora, row_width):
        s = scoring.score_actions(graphdef, base, lora, traj.obs_tokens, traj.obs_mask,
                                  traj.action_tokens, traj.action_mask, traj.adapter_ids,
                                  num_value_positions=4, row_width=row_width)
        objective = jnp.sum(jnp.where(traj.action_mask, s.token_logprobs + s.entropy, 0.0))
        return objective, s

    run = jax.jit(jax.value_and_grad(score, has_aux=True), static_argnums=1)
    (full_obj, full), full_grads = run(lora, None)
    (comp_obj, comp), comp_grads = run(lora, width)
    m = np.asarray(traj.action_mask)
    for got, want in ((comp.token_logprobs, full.token_logprobs), (comp.entropy, full.entropy),
                      (comp.features, full.features)):
        np.testing.assert_allclose(np.asarray(got)[m], np.asarray(want)[m], atol=1e-5)
    # a sum over the action tokens of terms each within 1e-5: the roundings add up
    np.testing.assert_allclose(comp_obj, full_obj, atol=1e-5 * np.sqrt(m.sum()))
    for got, want in zip(jax.tree.leaves(comp_grads), jax.tree.leaves(full_grads)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    trunk = jax.jit(lambda w: scoring.trunk_features(
        graphdef, base, lora, traj.obs_tokens, traj.obs_mask, traj.action_tokens,
        traj.action_mask, traj.adapter_ids, 4, w), static_argnums=0)
    np.testing.assert_allclose(np.asarray(trunk(width))[m], np.asarray(full.features)[m],
                               atol=1e-5)
    # The action-level value position runs the observations (and one action column) only.
    one = jax.jit(lambda w: scoring.trunk_features(
        graphdef, base, lora, traj.obs_tokens, traj.obs_mask, traj.action_tokens,
        traj.action_mask, traj.adapter_ids, 1, w), static_argnums=0)
    narrow = scoring.row_width(traj.obs_mask, traj.action_mask[..., :1], multiple=2)
    o = traj.obs_tokens.shape[-1]
    assert narrow is not None and narrow < width < o + 1
    for w in (None, narrow, o + 2):  # o + 2: wider than the O + 1 columns run
        np.testing.assert_allclose(one(w), full.features[..., :1, :], atol=1e-5)


def test_update_on_compacted_rows_equals_the_full_width_update(model):
    # Token level (every column's value on the compacted rows) with the KL reference pass;
    # the base trunk's features on compacted rows are compared in the test above.
    config = ROTATION
    graphdef, base, lora = model
    traj = _wide_trajectory(12, rounds=2, agents=2, envs=4, obs_len=8, act_len=4,
                            target_share=0.5)
    width = scoring.row_width(traj.obs_mask, traj.action_mask, multiple=2)
    update = make_update(graphdef, config)
    state = create_train_state(config, lora, jax.random.key(1), 64, 2)
    key = jax.random.key(2)
    full_state, full_metrics = update(state, base, traj, key)
    comp_state, comp_metrics = update(state, base, traj, key, row_width=width)
    for got, want in zip(_leaves((comp_state.lora, comp_state.critic)),
                         _leaves((full_state.lora, full_state.critic))):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    for name in ("policy_loss", "value_loss", "grad_norm", "approx_kl", "policy_steps"):
        np.testing.assert_allclose(comp_metrics[name], full_metrics[name], rtol=1e-4,
                                   atol=1e-6)


def test_bootstrap_is_skipped_only_when_every_episode_ended(model):
    """(Token-level GAE reads the bootstrap the same way, through 1 - done.)"""
    graphdef, base, lora = model
    config = PPOConfig(algorithm="marft_a", critic_trunk="base", advantage_norm="none")
    ended = make_trajectory(11, rounds=2, agents=2, envs=4, obs_len=5, act_len=3)
    running = ended.replace(dones=ended.dones.at[-1, 1].set(False))
    state = create_train_state(config, lora, jax.random.key(1), 64, 2)
    credit = CreditOrder.chain(2)
    prepare = jax.jit(lambda traj: batch_lib.prepare_batch(
        graphdef, config, credit, lora, state.critic, base, traj, None, 4)[0])
    feats = scoring.observation_features(graphdef, base, lora, ended.next_obs_tokens,
                                         ended.next_obs_mask, -1)  # the base trunk's
    boot = critic_lib.apply_head(jax.tree.map(lambda w: w[0], state.critic), feats)  # [E]
    assert float(jnp.min(jnp.abs(boot))) > 1e-3  # a bootstrap that would show
    estimate = batch_lib.adv_lib.ADVANTAGE_ESTIMATORS[config.spec.advantage]
    for traj in (ended, running):
        got = prepare(traj)
        inputs = batch_lib.adv_lib.AdvantageInputs(
            values=got.old_values, bootstrap_value=boot, rewards=traj.rewards,
            dones=traj.dones, action_mask=traj.action_mask)
        want, _ = estimate(inputs, credit, config)
        np.testing.assert_allclose(got.advantages, want, rtol=0, atol=1e-6)  # eager vs jit
    # The running env's last decision reads the bootstrap: its advantage moved.
    moved = np.abs(prepare(ended).advantages - prepare(running).advantages)
    assert moved.reshape(2, 2, 4, -1)[1, 1, 1].max() > 1e-3
