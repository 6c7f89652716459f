"""Advantage estimators against plain NumPy transcriptions of the reference recurrences.

The transcriptions loop per env, backwards over rounds, decisions and tokens, exactly as
REFERENCE §4.3 writes them, with the intra-round mask fixed to 1 and the successor read from
the dependency graph (`bootstrap_agent` / `bootstrap_next_round`).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from marft_jax.algorithms import advantages as adv
from marft_jax.algorithms.advantages import CreditOrder
from marft_jax.algorithms.config import PPOConfig
from marft_jax.errors import ConfigError
from marft_jax.flexmg.graph import DependencyGraph

GAMMA, LAM = 0.99, 0.95


def chain_graph(num_agents):
    roles = tuple(f"agent{i}" for i in range(num_agents))
    return DependencyGraph.from_dependencies(roles, [tuple(range(i)) for i in range(num_agents)])


def wave_graph():
    """Profile order != decision order: waves [1, 2] -> [0] -> [3]."""
    return DependencyGraph.from_dependencies(("agg", "solver_a", "solver_b", "verifier"),
                                             [(1, 2), (), (), (0,)])


def parallel_graph(num_agents=3):
    roles = tuple(f"solver{i}" for i in range(num_agents))
    return DependencyGraph.from_dependencies(roles, [()] * num_agents)


def random_data(seed, rounds, agents, envs, tokens):
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(rounds, agents, envs, tokens)).astype(np.float32)
    rewards = rng.normal(size=(rounds, agents, envs)).astype(np.float32)
    dones = rng.random((rounds, envs)) < 0.35
    dones[rounds // 2, 0] = True  # an episode end mid-buffer, always
    bootstrap = rng.normal(size=(envs,)).astype(np.float32)
    lengths = rng.integers(1, tokens + 1, (rounds, agents, envs))
    lengths[0, 0, 0] = 1
    lengths[-1, -1, -1] = tokens
    mask = np.arange(tokens) < lengths[..., None]
    return values, rewards, dones, bootstrap, mask


def numpy_gae_action(values, rewards, dones, bootstrap, graph, gamma=GAMMA, lam=LAM):
    """REFERENCE §4.3 action-level loop, mask fixed, successor from the graph."""
    rounds, agents, envs = values.shape
    adv_out = np.zeros_like(values)
    succ, nxt = graph.bootstrap_agent, graph.bootstrap_next_round
    first = graph.order[0]
    for e in range(envs):
        for t in reversed(range(rounds)):
            for i in reversed(graph.order):
                if nxt[i]:
                    mask = 1.0 - float(dones[t, e])
                    if t + 1 < rounds:
                        v_next, a_next = values[t + 1, first, e], adv_out[t + 1, first, e]
                    else:
                        v_next, a_next = bootstrap[e], 0.0
                else:
                    mask = 1.0
                    v_next, a_next = values[t, succ[i], e], adv_out[t, succ[i], e]
                delta = rewards[t, i, e] + gamma * v_next * mask - values[t, i, e]
                adv_out[t, i, e] = delta + gamma * lam * mask * a_next
    return adv_out, adv_out + values


def numpy_gae_token(values, rewards, dones, bootstrap, mask, graph, gamma=GAMMA, lam=LAM,
                    token_gamma=GAMMA):
    """REFERENCE §4.3 token-level loop (tokens -> agents -> rounds), mask fixed."""
    rounds, agents, envs, tokens = values.shape
    adv_out = np.zeros_like(values)
    ret_out = np.zeros_like(values)
    succ, nxt = graph.bootstrap_agent, graph.bootstrap_next_round
    first = graph.order[0]
    for e in range(envs):
        for t in reversed(range(rounds)):
            for i in reversed(graph.order):
                last = max(int(mask[t, i, e].sum()) - 1, 0)
                gae = 0.0
                for k in reversed(range(last + 1)):
                    if k == last:
                        if nxt[i]:
                            m = 1.0 - float(dones[t, e])
                            if t + 1 < rounds:
                                v_next = values[t + 1, first, e, 0]
                                a_next = adv_out[t + 1, first, e, 0]
                            else:
                                v_next, a_next = bootstrap[e], 0.0
                        else:
                            m = 1.0
                            v_next, a_next = values[t, succ[i], e, 0], adv_out[t, succ[i], e, 0]
                        delta = rewards[t, i, e] + gamma * v_next * m - values[t, i, e, k]
                        gae = delta + gamma * lam * m * a_next
                    else:
                        delta = token_gamma * values[t, i, e, k + 1] - values[t, i, e, k]
                        gae = delta + token_gamma * lam * gae
                    adv_out[t, i, e, k] = gae
                    ret_out[t, i, e, k] = gae + values[t, i, e, k]
    return adv_out, ret_out


GRAPHS = {"chain2": lambda: chain_graph(2), "chain4": lambda: chain_graph(4),
          "waves": wave_graph, "parallel": parallel_graph}


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_action_gae_matches_numpy(name):
    graph = GRAPHS[name]()
    values, rewards, dones, bootstrap, _ = random_data(0, 5, graph.num_agents, 3, 1)
    values = values[..., 0]
    credit = CreditOrder.from_graph(graph)
    got_adv, got_ret = jax.jit(adv.gae_action, static_argnums=(4, 5, 6))(
        values, rewards, dones, bootstrap, credit, GAMMA, LAM)
    want_adv, want_ret = numpy_gae_action(values, rewards, dones, bootstrap, graph)
    np.testing.assert_allclose(got_adv, want_adv, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_ret, want_ret, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(GRAPHS))
@pytest.mark.parametrize("token_gamma", [GAMMA, 1.0])
def test_token_gae_matches_numpy(name, token_gamma):
    graph = GRAPHS[name]()
    values, rewards, dones, bootstrap, mask = random_data(1, 4, graph.num_agents, 3, 5)
    credit = CreditOrder.from_graph(graph)
    got_adv, got_ret = jax.jit(adv.gae_token, static_argnums=(5, 6, 7, 8))(
        values, rewards, dones, bootstrap, mask, credit, GAMMA, LAM, token_gamma)
    want_adv, want_ret = numpy_gae_token(values, rewards, dones, bootstrap, mask, graph,
                                         token_gamma=token_gamma)
    np.testing.assert_allclose(got_adv, want_adv, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_ret, want_ret, rtol=1e-5, atol=1e-5)
    assert not np.any(np.asarray(got_adv)[~mask]), "padded tokens must get advantage 0"


def test_intra_round_mask_is_not_the_previous_done():
    """An episode that ends after round 0 must not cut round 1's agent chain (§4.3 fix)."""
    values = np.zeros((2, 2, 1), np.float32)
    rewards = np.array([[[0.0], [0.0]], [[0.0], [1.0]]], np.float32)
    dones = np.array([[True], [False]])
    got, _ = adv.gae_action(values, rewards, dones, np.zeros(1, np.float32),
                            CreditOrder.chain(2), GAMMA, LAM)
    # Round 1, agent 0 credits agent 1's reward through the intra-round link (mask 1) ...
    np.testing.assert_allclose(got[1, 0, 0], GAMMA * LAM * 1.0, rtol=1e-6)
    # ... while round 0 is cut from round 1 by the episode end.
    np.testing.assert_allclose(got[0, :, 0], 0.0)


def test_token_gae_single_token_equals_action_gae():
    graph = wave_graph()
    values, rewards, dones, bootstrap, _ = random_data(2, 3, 4, 2, 3)
    mask = np.zeros(values.shape, bool)
    mask[..., 0] = True
    credit = CreditOrder.from_graph(graph)
    tok, _ = adv.gae_token(values, rewards, dones, bootstrap, mask, credit, GAMMA, LAM, GAMMA)
    act, _ = adv.gae_action(values[..., 0], rewards, dones, bootstrap, credit, GAMMA, LAM)
    np.testing.assert_allclose(tok[..., 0], act, rtol=1e-6, atol=1e-6)


def test_credit_order_of_a_chain_graph_is_the_chain():
    assert CreditOrder.from_graph(chain_graph(3)) == CreditOrder.chain(3)
    wave = CreditOrder.from_graph(wave_graph())
    assert wave.order == (1, 2, 0, 3)
    assert wave.successor == (3, 0, 0, 1)
    assert wave.next_round == (False, False, False, True)


def test_credit_order_rejects_backward_successors():
    with pytest.raises(ConfigError, match="does not come later"):
        CreditOrder(order=(0, 1), successor=(1, 0), next_round=(False, False))
    with pytest.raises(ConfigError, match="first decision"):
        CreditOrder(order=(0, 1), successor=(1, 1), next_round=(False, True))


def test_normalize_uses_the_validity_mask_not_zeros():
    advantages = jnp.array([0.0, 2.0, 4.0, 100.0])
    valid = jnp.array([True, True, True, False])
    got = adv.normalize_advantages(advantages, valid, eps=0.0)
    std = np.std([0.0, 2.0, 4.0])
    np.testing.assert_allclose(got, [-2.0 / std, 0.0, 2.0 / std, 0.0], rtol=1e-6)


def test_group_normalize_by_hand():
    rewards = jnp.array([1.0, 0.0, 0.0, 0.0, 1.0, 1.0])  # groups of 3: [1,0,0], [0,1,1]
    got = adv.group_normalize(rewards, 3, eps=0.0)
    std = np.std([1.0, 0.0, 0.0])
    want = np.array([2 / 3, -1 / 3, -1 / 3, -2 / 3, 1 / 3, 1 / 3]) / std
    np.testing.assert_allclose(got, want, rtol=1e-6)
    with pytest.raises(ConfigError, match="ppo.group_size.*groups of 4"):
        adv.group_normalize(rewards, 4, eps=0.0)


def test_grpo_one_round_is_group_relative_reward_for_every_agent():
    scores = np.array([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0], np.float32)
    rewards = np.zeros((1, 2, 8), np.float32)
    rewards[0, 1] = scores  # the reference places the score in the last agent's slot
    dones = np.ones((1, 8), bool)
    got = adv.grpo_advantages(rewards, dones, CreditOrder.chain(2), GAMMA, 4, 1e-6)
    grouped = scores.reshape(2, 4)
    want = ((grouped - grouped.mean(1, keepdims=True))
            / (grouped.std(1, keepdims=True) + 1e-6)).reshape(8)
    np.testing.assert_allclose(got[0, 1], want, rtol=1e-5)
    # Agent 0's return-to-go is γ·score: the same after group normalisation.
    np.testing.assert_allclose(got[0, 0], want, rtol=1e-4, atol=1e-5)


def test_ippo_reward_shaping():
    rewards = jnp.array([[[1.0, 0.0], [0.0, 0.0], [0.5, 1.0]]])  # [R=1, A=3, E=2]
    got = adv.ippo_rewards(rewards, 0.5)
    team = np.array([0.5, 1.0 / 3.0])
    want = 0.5 * np.asarray(rewards) + 0.5 * team
    np.testing.assert_allclose(got, want, rtol=1e-6)
    cfg = PPOConfig(algorithm="ippo")
    np.testing.assert_allclose(adv.REWARD_TRANSFORMS[cfg.spec.reward_transform](rewards, cfg),
                               want, rtol=1e-6)


def test_estimator_registry_dispatches_by_name():
    graph = chain_graph(2)
    values, rewards, dones, bootstrap, mask = random_data(3, 2, 2, 4, 3)
    credit = CreditOrder.from_graph(graph)
    for name, algorithm in (("gae_action", "marft_a"), ("gae_token", "marft_t")):
        cfg = PPOConfig(algorithm=algorithm)
        vals = values[..., 0] if name == "gae_action" else values
        inputs = adv.AdvantageInputs(values=vals, bootstrap_value=bootstrap, rewards=rewards,
                                     dones=dones, action_mask=mask)
        got, _ = adv.ADVANTAGE_ESTIMATORS[cfg.spec.advantage](inputs, credit, cfg)
        want = (numpy_gae_action(vals, rewards, dones, bootstrap, graph)[0]
                if name == "gae_action"
                else numpy_gae_token(vals, rewards, dones, bootstrap, mask, graph)[0])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
