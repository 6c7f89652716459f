"""PPO losses against hand computations on small explicit numbers."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from marft_jax.algorithms import losses
from marft_jax.algorithms.advantages import normalize_advantages

NAN = float("nan")


def test_huber_is_symmetric():
    errors = jnp.array([-15.0, -3.0, 0.0, 3.0, 15.0])
    np.testing.assert_allclose(losses.huber(errors, 10.0), [100.0, 4.5, 0.0, 4.5, 100.0])
    np.testing.assert_allclose(losses.huber(errors, None), [112.5, 4.5, 0.0, 4.5, 112.5])


def test_sequence_logprob_normalisations():
    logp = jnp.array([[-1.0, -2.0, -3.0, NAN], [-4.0, NAN, NAN, NAN]])
    mask = jnp.array([[True, True, True, False], [False] * 4])
    np.testing.assert_allclose(losses.sequence_logprobs(logp, mask, "sum"), [-6.0, 0.0])
    np.testing.assert_allclose(losses.sequence_logprobs(logp, mask, "token"), [-2.0, 0.0])
    words = jnp.array([2, 0])
    np.testing.assert_allclose(losses.sequence_logprobs(logp, mask, "word", words), [-3.0, 0.0])
    with pytest.raises(ValueError, match="word_counts"):
        losses.sequence_logprobs(logp, mask, "word")


def _action_case():
    """R=1, A=2, E=2, K=2; ratios 1.5 / 0.5 (agent 0), 1.1 / empty action (agent 1)."""
    new = np.zeros((1, 2, 2, 2), np.float32)
    old = np.full((1, 2, 2, 2), NAN, np.float32)  # garbage in the padded slots
    mask = np.zeros((1, 2, 2, 2), bool)
    # agent 0, env 0: two tokens, sequence log-ratio log 1.5
    new[0, 0, 0] = [-0.5, -0.5]
    old[0, 0, 0] = [-0.5, -0.5 - math.log(1.5)]
    mask[0, 0, 0] = True
    # agent 0, env 1: one token, ratio 0.5
    new[0, 0, 1, 0], old[0, 0, 1, 0], mask[0, 0, 1, 0] = -1.0, -1.0 - math.log(0.5), True
    # agent 1, env 0: one token, ratio 1.1
    new[0, 1, 0, 0], old[0, 1, 0, 0], mask[0, 1, 0, 0] = -2.0, -2.0 - math.log(1.1), True
    # agent 1, env 1: no token at all
    advantages = np.array([[[2.0, -1.0], [1.0, 5.0]]], np.float32)
    entropy = np.array([[[[1.0, 3.0], [2.0, NAN]], [[4.0, NAN], [NAN, NAN]]]], np.float32)
    return (jnp.asarray(new), jnp.asarray(old), jnp.asarray(mask), jnp.asarray(advantages),
            jnp.asarray(entropy))


def test_action_level_ppo_by_hand():
    new, old, mask, advantages, entropy = _action_case()
    terms = losses.ppo_action_terms(new, old, mask, advantages, entropy, clip_eps=0.2)
    # agent 0: min(1.5·2, 1.2·2) = 2.4 and min(0.5·-1, 0.8·-1) = -0.8; agent 1: min(1.1, 1.1).
    np.testing.assert_allclose(terms.loss, [-2.4 + 0.8, -1.1], rtol=1e-5)
    np.testing.assert_allclose(terms.count, [2.0, 1.0])
    np.testing.assert_allclose(terms.clip_frac, [2.0, 0.0])
    kl = lambda rho: (rho - 1) - math.log(rho)
    np.testing.assert_allclose(terms.approx_kl, [kl(1.5) + kl(0.5), kl(1.1)], rtol=1e-5)
    np.testing.assert_allclose(terms.entropy, [2.0 + 2.0, 4.0], rtol=1e-6)
    np.testing.assert_allclose(terms.kl_ref, [0.0, 0.0])


def test_action_level_gradient_ignores_padding_and_clipped_ratios():
    new, old, mask, advantages, entropy = _action_case()
    grad = jax.grad(lambda n: jnp.sum(losses.ppo_action_terms(
        n, old, mask, advantages, entropy, clip_eps=0.2).loss))(new)
    want = np.zeros(new.shape, np.float32)
    want[0, 1, 0, 0] = -1.1  # d(−ρ·A)/d log π for the unclipped decision, ρ = 1.1, A = 1
    np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-7)


def test_action_level_token_normalisation_changes_the_ratio():
    new, old, mask, advantages, entropy = _action_case()
    terms = losses.ppo_action_terms(new, old, mask, advantages, entropy, 0.2, norm="token")
    # agent 0 env 0: log-ratio log(1.5) / 2 tokens -> ρ = √1.5 ≈ 1.2247 > 1.2 (still clipped)
    rho = math.sqrt(1.5)
    np.testing.assert_allclose(terms.approx_kl[0], (rho - 1 - math.log(rho))
                               + (0.5 - 1 - math.log(0.5)), rtol=1e-5)
    words = jnp.array([[[4.0, 1.0], [1.0, 1.0]]])
    terms = losses.ppo_action_terms(new, old, mask, advantages, entropy, 0.2, "word", words)
    rho = 1.5 ** 0.25  # ÷ 4 words: ρ ≈ 1.1067, inside the clip range
    np.testing.assert_allclose(terms.loss[0], -rho * 2.0 + 0.8, rtol=1e-5)


def test_token_level_ppo_by_hand():
    new = jnp.log(jnp.array([[[[0.5, 0.2, 0.9]]]]))  # R=A=E=1, K=3
    old = jnp.log(jnp.array([[[[0.25, 0.2, NAN]]]]))
    mask = jnp.array([[[[True, True, False]]]])
    advantages = jnp.array([[[[1.0, -3.0, 7.0]]]])
    entropy = jnp.array([[[[1.0, 2.0, 50.0]]]])
    ref = jnp.log(jnp.array([[[[0.5, 0.1, 0.3]]]]))
    terms = losses.ppo_token_terms(new, old, mask, advantages, entropy, 0.2, ref_logprobs=ref)
    # token 0: ρ = 2, A = 1 -> min(2, 1.2) = 1.2; token 1: ρ = 1, A = −3 -> −3.
    np.testing.assert_allclose(terms.loss, [-1.2 + 3.0], rtol=1e-6)
    np.testing.assert_allclose(terms.count, [2.0])
    np.testing.assert_allclose(terms.entropy, [3.0])
    np.testing.assert_allclose(terms.clip_frac, [1.0])
    np.testing.assert_allclose(terms.approx_kl, [1.0 - math.log(2.0)], rtol=1e-6)
    # k3 with d = log(ref / new): token 0 d = 0 -> 0; token 1 d = log 0.5.
    d = math.log(0.5)
    np.testing.assert_allclose(terms.kl_ref, [math.exp(d) - d - 1.0], rtol=1e-6)


def test_clipped_value_loss_by_hand():
    new = jnp.array([[[5.0, 0.1, 0.0, 9.0]]])  # [R=1, A=1, E=4]
    old = jnp.array([[[0.0, 0.0, 0.0, NAN]]])
    returns = jnp.array([[[1.0, 20.0, -20.0, NAN]]])
    valid = jnp.array([[[True, True, True, False]]])
    terms = losses.value_terms(new, old, returns, valid, clip_eps=0.2, huber_delta=10.0)
    # env 0: V_clip = 0.2: max(h(0.8) = 0.32, h(−4) = 8) = 8
    # env 1: V_clip = 0.1: h(19.9) = 10·(19.9 − 5) = 149 both ways
    # env 2: h(−20) = 150 (the reference's asymmetric Huber would give 0)
    np.testing.assert_allclose(terms.loss, [8.0 + 149.0 + 150.0], rtol=1e-5)
    np.testing.assert_allclose(terms.count, [3.0])
    unclipped = losses.value_terms(new, old, returns, valid, None, None)
    np.testing.assert_allclose(unclipped.loss, [0.5 * (16 + 19.9 ** 2 + 400)], rtol=1e-5)
    grad = jax.grad(lambda v: jnp.sum(losses.value_terms(v, old, returns, valid, 0.2,
                                                         10.0).loss))(new)
    assert np.all(np.isfinite(grad)) and grad[0, 0, 3] == 0.0


def test_sums_and_counts_make_micro_batch_means_exact():
    rng = np.random.default_rng(0)
    shape = (2, 3, 6, 4)
    new = jnp.asarray(rng.normal(size=shape) - 2.0, jnp.float32)
    old = jnp.asarray(rng.normal(size=shape) - 2.0, jnp.float32)
    mask = jnp.asarray(rng.random(shape) < 0.7)
    advantages = jnp.asarray(rng.normal(size=shape[:3]), jnp.float32)
    entropy = jnp.asarray(rng.random(shape), jnp.float32)
    whole = losses.ppo_action_terms(new, old, mask, advantages, entropy, 0.2)
    halves = [losses.ppo_action_terms(new[:, :, s], old[:, :, s], mask[:, :, s],
                                      advantages[:, :, s], entropy[:, :, s], 0.2)
              for s in (slice(0, 2), slice(2, 6))]
    summed = jax.tree.map(jnp.add, *halves)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6),
                 whole, summed)


def test_policy_loss_registry():
    assert losses.POLICY_LOSSES["action"] is losses.ppo_action_terms
    assert losses.POLICY_LOSSES["token"] is losses.ppo_token_terms


@pytest.mark.parametrize("level", ["action", "token"])
def test_non_finite_inputs_flag_their_agent_with_zero_gradient(level):
    new, old, mask, advantages, entropy = _action_case()
    old = old.at[0, 0, 1, 0].set(-jnp.inf)  # agent 0, env 1: a real token's old log-prob
    if level == "token":
        advantages = jnp.broadcast_to(advantages[..., None], new.shape)
    fn = losses.POLICY_LOSSES[level]
    terms = fn(new, old, mask, advantages, entropy, 0.2)
    assert np.isnan(terms.loss[0]) and np.isnan(terms.approx_kl[0])
    assert np.isfinite(terms.loss[1]) and np.isfinite(terms.entropy[0])
    grad = jax.grad(lambda n: jnp.sum(jnp.where(jnp.arange(2) == 1, fn(
        n, old, mask, advantages, entropy, 0.2).loss, 0.0)))(new)
    assert np.all(np.isfinite(grad))
    grad0 = jax.grad(lambda n: fn(n, old, mask, advantages, entropy, 0.2).loss[0])(new)
    assert np.all(np.isfinite(grad0)) and float(grad0[0, 0, 1, 0]) == 0.0


def test_nan_advantages_stay_out_of_the_normalisation_statistics():
    got = normalize_advantages(jnp.array([1.0, 3.0, NAN]), jnp.array([True, True, True]), 0.0)
    np.testing.assert_allclose(got[:2], [-1.0, 1.0], rtol=1e-6)
    assert np.isnan(got[2])
