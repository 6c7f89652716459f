"""The Flex-MG rollout: observations in token space, rewards, dones and judge lines."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from marft_jax.envs.math.datasets import MathProblem
from marft_jax.envs.math.task import build_math_task
from marft_jax.errors import ConfigError
from marft_jax.flexmg.game import init_game
from marft_jax.flexmg.layout import agent_observation_capacities, build_layout, state_capacity
from marft_jax.flexmg.profiles import team_from_dicts
from marft_jax.flexmg.rollout import RolloutConfig, make_rollout
from marft_jax.sampling.types import Generation
from marft_jax.tokenizer import Tokenizer

TOK = Tokenizer.byte_level()
K = 24  # action width


def scripted_policy(script):
    """A host policy: `script(role_index, observation_text) -> response text`."""

    def host(tokens, mask, adapter_ids):
        out = np.zeros((tokens.shape[0], K), np.int32)
        lens = np.zeros((tokens.shape[0],), np.int32)
        for row in range(tokens.shape[0]):
            text = TOK.decode(tokens[row][mask[row]], skip_special_tokens=False)
            ids = TOK.encode(script(int(adapter_ids[row]), text))[:K]
            out[row, :len(ids)] = ids
            lens[row] = len(ids)
        return out, lens

    def generate(params, tokens, mask, adapter_ids, temperatures, max_new, key,
                 one_adapter=None):
        shapes = (jax.ShapeDtypeStruct((tokens.shape[0], K), jnp.int32),
                  jax.ShapeDtypeStruct((tokens.shape[0],), jnp.int32))
        out, lens = jax.pure_callback(host, shapes, tokens, mask, adapter_ids,
                                      vmap_method="sequential")
        valid = jnp.arange(K)[None] < lens[:, None]
        zeros = jnp.zeros(out.shape, jnp.float32)
        return Generation(out, valid, zeros, zeros, lens)

    return generate


def _capacities(team, layout, table, horizon):
    """Each agent's longest observation, as `training.setup` derives it."""
    observed = state_capacity(layout, table.tokens.shape[1], K, team.num_agents, horizon - 1)
    return agent_observation_capacities(layout, observed, K,
                                        [len(d) for d in team.dependencies])


def _run(team, problems, script, *, style, rounds, envs=1, horizon=3, placement="last",
         policy=None, params=None, shared_prefix=False, obs_tokens=512, capacities=False):
    layout = build_layout(team, TOK, style)
    task = build_math_task([MathProblem(q, a, str(i)) for i, (q, a) in enumerate(problems)], TOK)
    table = task.table
    state_size = state_capacity(layout, table.tokens.shape[1], K, team.num_agents, horizon)
    caps = _capacities(team, layout, table, horizon) if capacities else None
    config = RolloutConfig(num_rounds=rounds, horizon=horizon, obs_tokens=obs_tokens,
                           action_tokens=K, reward_placement=placement,
                           shared_prefix=shared_prefix, agent_obs_tokens=caps)
    rollout = make_rollout(team, layout, table, policy or scripted_policy(script),
                           task.reward_fn(TOK, team.answer_mask), config)
    # Problem order from the key: the test uses one problem table of size 1 or a fixed order.
    game = init_game(layout, table, envs, state_size, jax.random.key(0))
    game, traj = rollout.compile()(params, game, jax.random.key(1))
    traj.check_shapes()
    return game, traj, layout


def _text(tokens, mask):
    return TOK.decode(np.asarray(tokens)[np.asarray(mask)], skip_special_tokens=False)


REF_TRIO = [
    {"role": "reasoner", "prompt": "<|im_start|>system: R<|im_end|>", "with_answer": False},
    {"role": "actor", "prompt": "<|im_start|>system: A<|im_end|>", "with_answer": True},
    {"role": "verifier", "prompt": "<|im_start|>system: V<|im_end|>", "with_answer": False},
]


def test_chain_observations_hold_exactly_the_expected_tokens():
    team = team_from_dicts(REF_TRIO)
    outputs = {0: "plan", 1: "\\boxed{5}", 2: "ok"}
    _, traj, _ = _run(team, [("2+3?", "5")], lambda a, _: outputs[a], style="reference",
                      rounds=1)
    state = "<|im_start|>problem: 2+3?<|im_end|>\n"
    expected = [
        "<|im_start|>system: R<|im_end|>" + state + "<|im_start|>reasoner: ",
        "<|im_start|>system: A<|im_end|>" + state + "<|im_start|>reasoner: plan<|im_end|>\n"
        + "<|im_start|>actor: ",
        "<|im_start|>system: V<|im_end|>" + state + "<|im_start|>reasoner: plan<|im_end|>\n"
        + "<|im_start|>actor: \\boxed{5}<|im_end|>\n<|im_start|>verifier: ",
    ]
    for agent, text in enumerate(expected):
        assert _text(traj.obs_tokens[0, agent, 0], traj.obs_mask[0, agent, 0]) == text
        # Left padding: the real tokens end at the last position.
        assert bool(traj.obs_mask[0, agent, 0, -1])
        assert TOK.decode(traj.action_tokens[0, agent, 0][traj.action_mask[0, agent, 0]],
                          skip_special_tokens=False) \
            == outputs[agent]
    # Correct answer: the reference places the score in the last slot only, and the episode ends.
    np.testing.assert_array_equal(np.asarray(traj.rewards[0, :, 0]), [0.0, 0.0, 1.0])
    assert bool(traj.dones[0, 0])


def test_parallel_wave_observations_in_chat_layout():
    team = team_from_dicts([
        {"role": "solver_a", "prompt": "SA", "with_answer": True, "depends_on": []},
        {"role": "solver_b", "prompt": "SB", "with_answer": True, "depends_on": []},
        {"role": "aggregator", "prompt": "AG", "with_answer": True,
         "depends_on": ["solver_a", "solver_b"]},
    ])
    outputs = {0: "\\boxed{7}", 1: "\\boxed{8}", 2: "\\boxed{7}"}
    _, traj, _ = _run(team, [("3+4?", "7")], lambda a, _: outputs[a], style="chat",
                      rounds=1, placement="answering")
    user_open = "<|im_start|>user\n"
    turn = "<|im_end|>\n<|im_start|>assistant\n"
    expected = {
        0: f"<|im_start|>system\nSA<|im_end|>\n{user_open}problem: 3+4?\n{turn}solver_a: ",
        1: f"<|im_start|>system\nSB<|im_end|>\n{user_open}problem: 3+4?\n{turn}solver_b: ",
        2: f"<|im_start|>system\nAG<|im_end|>\n{user_open}problem: 3+4?\n"
           f"solver_a: \\boxed{{7}}\nsolver_b: \\boxed{{8}}\n{turn}aggregator: ",
    }
    for agent, text in expected.items():
        assert _text(traj.obs_tokens[0, agent, 0], traj.obs_mask[0, agent, 0]) == text
    # Solvers of one wave do not see each other; answering placement grades each answerer.
    np.testing.assert_array_equal(np.asarray(traj.rewards[0, :, 0]), [1.0, 0.0, 1.0])
    np.testing.assert_allclose(float(traj.scores[0, 0]), 2 / 3, rtol=1e-6)


def test_two_round_episode_with_scripted_policy():
    team = team_from_dicts(REF_TRIO[:2])
    problems = [("What is 2+3?", "5")]

    def script(agent, obs_text):
        wrong_before = "judge: The answer is incorrect." in obs_text
        if agent == 0:
            return "retry" if wrong_before else "add"
        return "\\boxed{5}" if wrong_before else "\\boxed{6}"

    game, traj, layout = _run(team, problems, script, style="reference", rounds=3, horizon=3)
    # Round 0 wrong, round 1 right (episode ends, env resets), round 2 wrong again.
    np.testing.assert_array_equal(np.asarray(traj.scores[:, 0]), [0.0, 1.0, 0.0])
    np.testing.assert_array_equal(np.asarray(traj.dones[:, 0]), [False, True, False])
    np.testing.assert_array_equal(np.asarray(traj.rewards[:, :, 0]),
                                  [[0.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    # Round 1's observation holds round 0's history and the judge line, as in the reference.
    round1_actor = _text(traj.obs_tokens[1, 1, 0], traj.obs_mask[1, 1, 0])
    assert round1_actor == (
        "<|im_start|>system: A<|im_end|><|im_start|>problem: What is 2+3?<|im_end|>\n"
        "reasoner: add\nactor: \\boxed{6}\njudge: The answer is incorrect.\n"
        "<|im_start|>reasoner: retry<|im_end|>\n<|im_start|>actor: ")
    # After the reset, round 2 starts from the bare problem again.
    round2_reasoner = _text(traj.obs_tokens[2, 0, 0], traj.obs_mask[2, 0, 0])
    assert round2_reasoner.endswith("<|im_start|>problem: What is 2+3?<|im_end|>\n"
                                    "<|im_start|>reasoner: ")
    # The state after the last (wrong) round holds its judge line; bootstrap obs is agent 0's.
    state = TOK.decode(np.asarray(game.tokens[0, :int(game.length[0])]), skip_special_tokens=False)
    assert state.endswith("judge: The answer is incorrect.\n")
    assert int(game.round[0]) == 1
    assert _text(traj.next_obs_tokens[0], traj.next_obs_mask[0]).endswith("<|im_start|>reasoner: ")
    assert not bool(game.overflow[0])


def test_horizon_ends_an_unsolved_episode():
    team = team_from_dicts(REF_TRIO[:2])
    _, traj, _ = _run(team, [("1+1?", "2")], lambda a, _: "\\boxed{3}", style="reference",
                      rounds=4, horizon=2)
    np.testing.assert_array_equal(np.asarray(traj.dones[:, 0]), [False, True, False, True])
    assert float(jnp.sum(traj.rewards)) == 0.0


def test_trim_padding_keeps_every_real_token():
    from marft_jax.flexmg.trajectory import trim_padding

    team = team_from_dicts(REF_TRIO[:2])
    _, traj, _ = _run(team, [("2+3?", "5")], lambda a, _: ["a", "\\boxed{5}"][a],
                      style="reference", rounds=2)
    trimmed = trim_padding(traj, multiple=8)
    assert trimmed.obs_tokens.shape[-1] < traj.obs_tokens.shape[-1]
    assert trimmed.obs_tokens.shape[-1] % 8 == 0
    assert trimmed.action_tokens.shape[-1] == 16  # longest response 9 tokens -> 16
    for full, cut in ((traj.obs_mask, trimmed.obs_mask), (traj.action_mask, trimmed.action_mask)):
        assert int(jnp.sum(full)) == int(jnp.sum(cut))
    for r in range(2):
        for a in range(2):
            assert _text(traj.obs_tokens[r, a, 0], traj.obs_mask[r, a, 0]) == \
                _text(trimmed.obs_tokens[r, a, 0], trimmed.obs_mask[r, a, 0])


def test_grpo_groups_share_problems_and_reset_together():
    from marft_jax.flexmg.game import transition

    team = team_from_dicts(REF_TRIO[:2])
    layout = build_layout(team, TOK, "reference")
    task = build_math_task([MathProblem(f"{i}+0?", str(i), str(i)) for i in range(10)], TOK)
    size = state_capacity(layout, task.table.tokens.shape[1], K, 2, 3)
    game = init_game(layout, task.table, 8, size, jax.random.key(3), group_size=4)
    order = np.asarray(game.order)
    np.testing.assert_array_equal(np.asarray(game.problem_id), [order[0]] * 4 + [order[1]] * 4)
    assert int(game.cursor) == 2
    actions = jnp.ones((2, 8, K), jnp.int32)
    lengths = jnp.full((2, 8), 3, jnp.int32)
    # Group 0 all correct, group 1 only partly: group 0 moves on, group 1 keeps its problem.
    score = jnp.array([1, 1, 1, 1, 1, 0, 0, 0], jnp.float32)
    game, done = transition(game, layout, task.table, actions, lengths, (0, 1), score, 3)
    np.testing.assert_array_equal(np.asarray(done), [True] * 4 + [False] * 4)
    np.testing.assert_array_equal(np.asarray(game.problem_id), [order[2]] * 4 + [order[1]] * 4)
    np.testing.assert_array_equal(np.asarray(game.round), [0] * 4 + [1] * 4)
    assert int(game.cursor) == 3
    # Horizon 2: group 1 (in its second round) ends unsolved, group 0 (first round) plays on.
    game, done = transition(game, layout, task.table, actions, lengths, (0, 1),
                            jnp.zeros(8), 2)
    np.testing.assert_array_equal(np.asarray(done), [False] * 4 + [True] * 4)
    np.testing.assert_array_equal(np.asarray(game.problem_id), [order[2]] * 4 + [order[3]] * 4)
    assert game.group_size == 4 and int(game.cursor) == 4


PREFIX_TEAM = [
    {"role": "solver_a", "prompt": "short", "with_answer": True, "depends_on": []},
    {"role": "solver_b", "prompt": "a much longer system prompt", "with_answer": True,
     "depends_on": []},
    {"role": "aggregator", "prompt": "AG", "with_answer": True,
     "depends_on": ["solver_a", "solver_b"]},
]


def test_split_prefix_keeps_every_observation_token():
    """Each row's prefix followed by its remainder is its observation, for a wave whose
    agents' prefixes differ in length (the remainder width is O minus the shortest)."""
    from marft_jax.flexmg.rollout import split_prefix

    team = team_from_dicts(PREFIX_TEAM)
    _, traj, layout = _run(team, [("3+4?", "7"), ("1+1?", "2")], lambda a, _: "x",
                           style="chat", rounds=1, envs=2, obs_tokens=160)
    obs, mask = traj.obs_tokens[0, :2], traj.obs_mask[0, :2]  # wave 0: the two solvers
    prefix, rest, rest_mask = split_prefix(layout.prefix, (0, 1), obs, mask, np.array([0, 1, 2]))
    lengths = np.asarray(layout.prefix.lengths)[:2]
    assert rest.shape == (4, 160 - lengths.min()) and prefix.tokens.shape[1] == lengths.max()
    for row in range(4):
        group = int(prefix.group[row])
        joined = np.concatenate([np.asarray(prefix.tokens[group])[np.asarray(prefix.mask[group])],
                                 np.asarray(rest[row])[np.asarray(rest_mask[row])]])
        want = np.asarray(obs[row // 2, row % 2])[np.asarray(mask[row // 2, row % 2])]
        np.testing.assert_array_equal(joined, want)


def test_shared_prefix_rollout_samples_the_same_trajectory():
    """A tiny random model samples the same actions and log-probs with each agent's
    prefix prefilled once per wave as with whole observations, and with each wave's
    prompts cut to its agents' observation capacity (`RolloutConfig.agent_obs_tokens`)."""
    from marft_jax.models import functional as F
    from marft_jax.models.config import LoraConfig
    from marft_jax.sampling import SamplerConfig, generate
    from tests.conftest import tiny_config

    graphdef, base, lora = F.init_model(tiny_config(vocab_size=TOK.vocab_size),
                                        LoraConfig(num_adapters=3, rank=4), seed=0)
    lora = jax.tree.map(lambda x: x + 0.05, lora)
    config = SamplerConfig(max_new_tokens=K, pad_token_id=0, top_k=0)

    def policy(params, tokens, mask, ids, temps, max_new, key, prefix=None,
               one_adapter=None):
        return generate(graphdef, *params, tokens, mask, ids, key, temps, max_new,
                        config=config, prefix=prefix, one_adapter=one_adapter)

    team = team_from_dicts(PREFIX_TEAM)
    problems = [("3+4?", "7"), ("1+1?", "2")]
    run = lambda shared, caps: _run(
        team, problems, None, style="chat", rounds=1, envs=2, horizon=1, policy=policy,
        params=(base, lora), shared_prefix=shared, obs_tokens=160, capacities=caps)[1]
    whole = run(False, False)
    lengths = np.asarray(whole.obs_mask).sum(-1).max(axis=(0, 2))  # [A] longest real
    table = build_math_task([MathProblem(q, a, str(i)) for i, (q, a) in enumerate(problems)],
                            TOK).table
    caps = np.asarray(_capacities(team, build_layout(team, TOK, "chat"), table, 1))
    assert np.all(lengths <= caps) and np.min(caps) < 100  # the solvers' waves are cut
    for shared, capacities in ((False, True), (True, True)):  # how training.setup runs it
        got = run(shared, capacities)
        for name in ("obs_tokens", "obs_mask", "action_tokens", "action_mask"):
            np.testing.assert_array_equal(np.asarray(getattr(got, name)),
                                          np.asarray(getattr(whole, name)))
        np.testing.assert_allclose(np.asarray(got.policy_logprobs),
                                   np.asarray(whole.policy_logprobs), atol=1e-4)
    assert np.asarray(whole.action_mask).sum() > 10


@pytest.mark.parametrize("changes, field", [
    ({"num_rounds": 0}, "num_rounds"), ({"obs_tokens": 2.5}, "obs_tokens"),
    ({"reward_placement": "all"}, "reward_placement"),
    ({"obs_tokens": 8, "agent_obs_tokens": (8, 9)}, "agent_obs_tokens"),
])
def test_rollout_config_names_a_bad_field(changes, field):
    with pytest.raises(ConfigError, match=rf"rollout config: field '{field}'"):
        RolloutConfig(**changes)
