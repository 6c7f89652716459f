"""`ppo.shared_prefix`: each agent's observation prefix run once per scoring call.

Compared with the whole-row computation (the switch off) on a tiny random model: log-probs,
entropies, critic features, LoRA gradients and whole updates.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from marft_jax.algorithms import scoring
from marft_jax.algorithms.config import PPOConfig
from marft_jax.algorithms.state import create_train_state
from marft_jax.algorithms.update import make_update
from marft_jax.errors import ConfigError
from marft_jax.flexmg.layout import Segments
from marft_jax.models.layers import BASE_ADAPTER
from tests.test_update import MARFT_A, ROTATION, _leaves, make_trajectory, model  # noqa: F401


def prefixed_trajectory(seed, lengths=(3, 5), obs_len=10, capacity=None, **sizes):
    """`make_trajectory` whose observations start with their agent's prefix (`lengths`
    tokens each), left-padded to `obs_len` with different real lengths (agent i's at most
    `capacity[i]`, default `obs_len`); one row's observation is its prefix alone."""
    traj = make_trajectory(seed, obs_len=obs_len, **sizes)
    rng = np.random.default_rng(seed + 100)
    prefixes = Segments.from_lists([rng.integers(1, 256, n).tolist() for n in lengths])
    r, a, e, o = traj.obs_tokens.shape
    obs = np.zeros((r, a, e, o), np.int32)
    mask = np.zeros((r, a, e, o), bool)
    for i in np.ndindex(r, a, e):
        n = lengths[i[1]]
        longest = o if capacity is None else capacity[i[1]]
        real = n if i == (0, 1, 0) else int(rng.integers(n + 1, longest + 1))
        row = np.concatenate([prefixes.tokens[i[1], :n], rng.integers(1, 256, real - n)])
        obs[i][o - real:], mask[i][o - real:] = row, True
    return traj.replace(obs_tokens=jnp.asarray(obs), obs_mask=jnp.asarray(mask)), prefixes


@pytest.mark.parametrize("remat", ["none", "layers"])
def test_prefix_scores_and_gradients_equal_whole_rows(model, remat):
    graphdef, base, lora = model
    lora = jax.tree.map(lambda x: x + 0.05, lora)
    capacity = (6, 10)  # agent 0's observations are shorter: its rows run 3 columns wide
    traj, prefixes = prefixed_trajectory(21, rounds=2, agents=2, envs=3, act_len=4,
                                         capacity=capacity)
    args = (traj.obs_tokens, traj.obs_mask, traj.action_tokens, traj.action_mask)

    def score(lora, prefix, remat="none", obs_capacity=None):
        s = scoring.score_actions(graphdef, base, lora, *args, traj.adapter_ids,
                                  num_value_positions=4, remat=remat, prefix=prefix,
                                  obs_capacity=obs_capacity)
        objective = jnp.sum(jnp.where(traj.action_mask, s.token_logprobs + s.entropy, 0.0))
        return objective, s

    run = jax.jit(jax.value_and_grad(score, has_aux=True), static_argnums=1)
    (full_obj, full), full_grads = run(lora, None)
    shared_run = jax.jit(jax.value_and_grad(lambda lo: score(lo, prefixes, remat),
                                            has_aux=True))  # remat: the layer scan
    # and each agent's rows in a pass of their own, at its observations' capacity (the
    # same prefix_forward per pass: its remat path is the one checked just before)
    per_agent_run = jax.jit(jax.value_and_grad(lambda lo: score(lo, prefixes, "none", capacity),
                                               has_aux=True))
    m = np.asarray(traj.action_mask)
    runs = (shared_run(lora),) + ((per_agent_run(lora),) if remat == "none" else ())
    for (obj, shared), grads in runs:
        for got, want in ((shared.token_logprobs, full.token_logprobs),
                          (shared.entropy, full.entropy), (shared.features, full.features)):
            np.testing.assert_allclose(np.asarray(got)[m], np.asarray(want)[m], atol=1e-5)
        np.testing.assert_allclose(obj, full_obj, rtol=1e-5)
        for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(full_grads)):
            assert np.any(np.asarray(want) != 0)
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    # The base trunk's features (adapters off, the prefix on the base model too).
    trunk = lambda p: jax.jit(lambda: scoring.trunk_features(
        graphdef, base, lora, *args, BASE_ADAPTER, 1, prefix=p))()  # prefix: host arrays
    np.testing.assert_allclose(np.asarray(trunk(prefixes)), np.asarray(trunk(None)),
                               atol=1e-5)
    per_agent = jax.jit(lambda: scoring.trunk_features(
        graphdef, base, lora, *args, BASE_ADAPTER, 1, prefix=prefixes,
        obs_capacity=capacity))()
    np.testing.assert_allclose(np.asarray(per_agent), np.asarray(trunk(None)), atol=1e-5)


# (remat's prefix path is compared with whole rows in the scores-and-gradients test above)
@pytest.mark.parametrize("config", [MARFT_A.replace(kl_coef=0.1), ROTATION],
                         ids=["marft_a_base_trunk", "marft_t_shared_trunk"])
def test_update_with_shared_prefix_equals_the_whole_row_update(model, config):
    graphdef, base, lora = model
    traj, prefixes = prefixed_trajectory(22, rounds=2, agents=2, envs=4, act_len=4,
                                         target_share=0.5)
    state = create_train_state(config, lora, jax.random.key(1), 64, 2)
    key = jax.random.key(2)
    whole = make_update(graphdef, config.replace(remat="none"))  # the plain forward
    full_state, full_metrics = whole(state, base, traj, key)
    shared_update = make_update(graphdef, config.replace(shared_prefix=True),
                                prefix=prefixes)
    new_state, metrics = shared_update(state, base, traj, key)
    # atol 1e-5 = 0.1 % of the first Adam step (lr 1e-2): the step is lr * g / (|g| + eps)
    # with eps 1e-5, so a gradient element near eps turns float rounding (~1e-10) into
    # ~1e-6 of a step (seen once in 256 elements; every other element within 1e-6).
    for got, want in zip(_leaves((new_state.lora, new_state.critic)),
                         _leaves((full_state.lora, full_state.critic))):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert not all(np.array_equal(x, y) for x, y in zip(_leaves(new_state.lora),
                                                        _leaves(state.lora)))
    for name in ("policy_loss", "value_loss", "grad_norm", "approx_kl", "policy_steps",
                 "advantage_mean", "advantage_std"):
        np.testing.assert_allclose(metrics[name], full_metrics[name], rtol=1e-4, atol=1e-6)


def test_shared_prefix_refuses_row_trim_and_a_missing_prefix(model):
    with pytest.raises(ConfigError, match="shared_prefix"):
        PPOConfig(shared_prefix=True, row_trim=True)
    with pytest.raises(ConfigError, match="shared_prefix"):
        make_update(model[0], MARFT_A.replace(shared_prefix=True))
