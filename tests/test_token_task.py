"""The JAX-native token task: one jit for the whole rollout, vmapped over seeds."""

import jax
import jax.numpy as jnp
import numpy as np

from marft_jax.envs.tokens import (TokenTaskConfig, token_layout, token_problems,
                                   token_reward_fn)
from marft_jax.flexmg.game import init_game
from marft_jax.flexmg.layout import state_capacity
from marft_jax.flexmg.profiles import team_from_dicts
from marft_jax.flexmg.rollout import RolloutConfig, make_rollout
from marft_jax.sampling.types import Generation

CFG = TokenTaskConfig(num_symbols=5, first_symbol=3, num_agents=2)
K = 3
TEAM = team_from_dicts([{"role": "first", "prompt": "", "with_answer": False},
                        {"role": "second", "prompt": "", "with_answer": True}])


def _generation(tokens, mask):
    """A `Generation` of scripted tokens, with zero log-probs."""
    zeros = jnp.zeros(tokens.shape)
    return Generation(tokens, mask, zeros, zeros, mask.sum(-1).astype(jnp.int32))


def random_policy(params, tokens, mask, adapter_ids, temperatures, max_new, key,
                  one_adapter=None):
    out = jax.random.randint(key, (tokens.shape[0], K), 1, CFG.vocab_needed)
    valid = jnp.ones(out.shape, bool)
    return _generation(out.astype(jnp.int32), valid)


def solving_policy(params, tokens, mask, adapter_ids, temperatures, max_new, key,
                   one_adapter=None):
    """Agent 0 plays symbol 0; agent 1 reads the target (4th token from the end) and plays it."""
    target = tokens[:, -4] - CFG.first_symbol
    first = jnp.where(adapter_ids == 0, 0, target) + CFG.first_symbol
    out = jnp.stack([first] + [jnp.zeros_like(first)] * (K - 1), axis=1).astype(jnp.int32)
    valid = jnp.arange(K)[None] < 1
    return _generation(out, jnp.broadcast_to(valid, out.shape))


def _rollout(policy, envs=4, rounds=3):
    layout = token_layout(CFG)
    table = token_problems(CFG)
    size = state_capacity(layout, 1, K, 2, 1)
    config = RolloutConfig(num_rounds=rounds, horizon=1, obs_tokens=16, action_tokens=K)
    rollout = make_rollout(TEAM, layout, table, policy, token_reward_fn(CFG), config)

    def run(seed):
        key = jax.random.key(seed)
        game = init_game(layout, table, envs, size, jax.random.fold_in(key, 0))
        return rollout(None, game, jax.random.fold_in(key, 1))

    return run


def test_rollout_is_deterministic_per_key_and_vmaps_over_seeds():
    run = jax.jit(_rollout(random_policy))
    seeds = jnp.arange(8)
    _, batched = jax.jit(jax.vmap(run))(seeds)
    assert batched.action_tokens.shape == (8, 3, 2, 4, K)
    for s in (0, 5):
        _, single = run(s)
        _, again = run(s)
        for a, b, c in zip(jax.tree_util.tree_leaves(single), jax.tree_util.tree_leaves(again),
                           jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda x: x[s],
                                                                            batched))):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
            np.testing.assert_array_equal(np.asarray(a), np.asarray(c))
    # Different seeds give different trajectories.
    assert not np.array_equal(np.asarray(batched.action_tokens[0]),
                              np.asarray(batched.action_tokens[1]))


def test_rewards_follow_the_task_rule():
    _, traj = jax.jit(_rollout(random_policy, envs=16, rounds=4))(3)
    acts = np.asarray(traj.action_tokens[..., 0]) - CFG.first_symbol  # [R, A, E]
    valid = np.all((acts >= 0) & (acts < CFG.num_symbols), axis=1)
    obs = np.asarray(traj.obs_tokens)  # target is the first state token of agent 0's obs
    target = obs[:, 0, :, -2] - CFG.first_symbol
    expected = valid & (acts.sum(axis=1) % CFG.num_symbols == target)
    np.testing.assert_array_equal(np.asarray(traj.scores) > 0, expected)
    np.testing.assert_array_equal(np.asarray(traj.rewards[:, 1]), expected.astype(np.float32))
    assert np.all(np.asarray(traj.rewards[:, 0]) == 0)
    assert np.all(np.asarray(traj.dones))  # horizon 1


def test_a_coordinating_team_always_succeeds():
    _, traj = jax.jit(_rollout(solving_policy, envs=8, rounds=2))(0)
    assert float(jnp.min(traj.scores)) == 1.0
