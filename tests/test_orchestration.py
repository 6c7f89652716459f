"""Orchestrated teams (a dynamic D_t): the profile format, the router's choice, who acts,
credit assignment that skips the agents not called, and episodes the orchestrator ends."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from marft_jax.algorithms.advantages import CreditOrder, gae_action, gae_token
from marft_jax.envs.math.datasets import MathProblem
from marft_jax.envs.math.task import build_math_task
from marft_jax.errors import ConfigError
from marft_jax.flexmg.game import init_game
from marft_jax.flexmg.layout import build_layout, state_capacity
from marft_jax.flexmg.orchestration import (active_agents, host_router, parse_orchestration,
                                            token_choice_router)
from marft_jax.flexmg.profiles import load_team, team_from_dicts
from marft_jax.flexmg.rollout import RolloutConfig, make_rollout
from tests.test_rollout import K, TOK, _text, scripted_policy

ORCH = [
    {"role": "orchestrator", "prompt": "O", "depends_on": [], "calls": ["solver", "checker"],
     "default_calls": ["solver"]},
    {"role": "solver", "prompt": "S", "with_answer": True, "depends_on": ["orchestrator"]},
    {"role": "checker", "prompt": "C", "with_answer": True,
     "depends_on": ["orchestrator", "solver"]},
]


def _with(index, **changes):
    profiles = json.loads(json.dumps(ORCH))
    profiles[index].update(changes)
    return [{k: v for k, v in p.items() if v is not None} for p in profiles]


# ------------------------------------------------------------------------ profile format


def test_orchestrated_team_loads_with_the_orchestrator_alone_in_wave_0():
    team = team_from_dicts(ORCH)
    assert team.orchestrator == 0
    assert team.callable_mask == (False, True, True)
    assert team.default_call_mask == (False, True, False)
    assert team.graph.waves == ((0,), (1,), (2,))
    assert team.graph.dynamic and CreditOrder.from_graph(team.graph).skip_idle
    plain = team_from_dicts([{"role": "a", "prompt": ""}, {"role": "b", "prompt": ""}])
    assert plain.orchestrator is None and not plain.graph.dynamic


@pytest.mark.parametrize("profiles, fragments", [
    (_with(0, calls=["solver", "nobody"]), ["profile 0 (role 'orchestrator')", "field 'calls'",
                                            "unknown role 'nobody'"]),
    (_with(0, calls=["orchestrator"]), ["field 'calls' names the orchestrator itself"]),
    (_with(0, calls=[]), ["field 'calls' must name at least one role"]),
    (_with(0, calls="solver"), ["field 'calls' must be a list of roles"]),
    (_with(0, calls=["solver", "solver"]), ["field 'calls' names 'solver' twice"]),
    (_with(0, default_calls=["checker", "x"]), ["field 'default_calls' names unknown role"]),
    (_with(0, calls=["checker"]), ["field 'default_calls' names 'solver', which is not in "
                                   "field 'calls'"]),
    (_with(1, default_calls=["checker"]), ["profile 1 (role 'solver')",
                                           "field 'default_calls' needs field 'calls'"]),
    (_with(2, calls=["solver"]), ["profile 2 (role 'checker')", "field 'calls': a team has "
                                  "one orchestrator"]),
    (_with(0, depends_on=["solver"]), ["field 'depends_on'"]),
    (_with(1, depends_on=[]), ["profile 1 (role 'solver')", "field 'depends_on' must name "
                               "the orchestrator 'orchestrator'"]),
])
def test_bad_orchestrated_profiles_give_one_line_naming_file_and_field(tmp_path, profiles,
                                                                       fragments):
    path = tmp_path / "team.json"
    path.write_text(json.dumps(profiles))
    with pytest.raises(ConfigError) as info:
        load_team(path)
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_an_orchestrated_team_cannot_be_made_independent():
    with pytest.raises(ConfigError, match="field 'calls'"):
        team_from_dicts(ORCH).independent()


@pytest.mark.parametrize("name", ["token_route", "math_orchestrated"])
def test_shipped_orchestrated_teams_load(name):
    team = load_team(name)
    assert team.orchestrator == 0 and team.graph.dynamic


# ------------------------------------------------------------------- who acts this round


def test_active_agents_follow_calls_defaults_and_done():
    team = team_from_dicts(ORCH)
    calls = jnp.asarray([[False, False, True],    # checker called
                         [False, False, False],   # nobody named: default (solver)
                         [True, True, True],      # both
                         [False, True, False]])   # solver, but done
    done = jnp.asarray([False, False, False, True])
    active = np.asarray(active_agents(team, calls, done))
    np.testing.assert_array_equal(active, [[1, 0, 1], [1, 1, 0], [1, 1, 1], [1, 0, 0]])


def test_token_choice_router_reads_the_orchestrators_first_token():
    team = load_team("token_route")  # calls worker_a, worker_b: choices 0, 1, done = 2
    first = 3
    tokens = jnp.asarray([first + 0, first + 1, first + 2, first + 3, first + 5])
    actions = jnp.zeros((3, 5, 2), jnp.int32).at[0, :, 0].set(tokens)
    lengths = jnp.ones((3, 5), jnp.int32)
    calls, done = token_choice_router(team, first)(actions, lengths)
    np.testing.assert_array_equal(np.asarray(done), [0, 0, 1, 0, 1])
    np.testing.assert_array_equal(np.asarray(calls),
                                  [[0, 1, 0], [0, 0, 1], [0, 0, 0], [0, 1, 0], [0, 0, 0]])


def test_parse_orchestration_takes_only_callable_roles():
    called, done = parse_orchestration(
        "Plan: <call>solver</call> then <call> judge </call><call>checker</call>", ("solver", "checker"))
    assert called == {"solver", "checker"} and not done
    assert parse_orchestration("all good <done/>", ("solver",)) == (set(), True)
    assert parse_orchestration("<call>Solver</call>", ("solver",)) == (set(), False)


# ---------------------------------------------------------------------- credit assignment


def _chain(skip):
    return CreditOrder(order=(0, 1, 2), successor=(1, 2, 0), next_round=(False, False, True),
                       skip_idle=skip)


def test_gae_skipping_equals_gae_without_the_idle_decision():
    """Agent 1 not called in env 0 of round 0: agents 0 and 2 get the advantages of a team
    without that decision; with everyone acting it is the ordinary GAE."""
    rng = np.random.default_rng(0)
    r, a, e = 3, 3, 2
    values = jnp.asarray(rng.normal(size=(r, a, e)), jnp.float32)
    rewards = jnp.asarray(rng.normal(size=(r, a, e)), jnp.float32)
    dones = jnp.asarray([[False, True], [True, False], [False, False]])
    boot = jnp.asarray(rng.normal(size=(e,)), jnp.float32)
    everyone = jnp.ones((r, a, e), bool)
    plain = gae_action(values, rewards, dones, boot, _chain(False), 0.9, 0.8)
    skipped_none = gae_action(values, rewards, dones, boot, _chain(True), 0.9, 0.8, everyone)
    np.testing.assert_allclose(skipped_none[0], plain[0], rtol=1e-6, atol=1e-6)

    acted = everyone.at[0, 1, 0].set(False)
    adv, _ = gae_action(values, rewards, dones, boot, _chain(True), 0.9, 0.8, acted)
    assert float(adv[0, 1, 0]) == 0.0
    # By hand, env 0: round 0 is agents 0 -> 2 only; rounds 1, 2 unchanged.
    later, _ = gae_action(values[1:, :, :1], rewards[1:, :, :1], dones[1:, :1], boot[:1],
                          _chain(False), 0.9, 0.8)
    np.testing.assert_allclose(adv[1:, :, 0], later[:, :, 0], rtol=1e-6, atol=1e-6)
    nd = 1.0 - float(dones[0, 0])
    v, rw = np.asarray(values)[0, :, 0], np.asarray(rewards)[0, :, 0]
    a2 = rw[2] + 0.9 * nd * float(values[1, 0, 0]) - v[2] + 0.9 * 0.8 * nd * float(later[0, 0, 0])
    a0 = rw[0] + 0.9 * v[2] - v[0] + 0.9 * 0.8 * a2
    np.testing.assert_allclose([float(adv[0, 2, 0]), float(adv[0, 0, 0])], [a2, a0],
                               rtol=1e-5, atol=1e-5)
    # Env 1 is untouched.
    np.testing.assert_allclose(adv[:, :, 1], plain[0][:, :, 1], rtol=1e-6, atol=1e-6)


def test_token_gae_skips_decisions_without_tokens():
    rng = np.random.default_rng(1)
    r, a, e, k = 2, 3, 2, 3
    values = jnp.asarray(rng.normal(size=(r, a, e, k)), jnp.float32)
    rewards = jnp.asarray(rng.normal(size=(r, a, e)), jnp.float32)
    dones = jnp.zeros((r, e), bool)
    boot = jnp.asarray(rng.normal(size=(e,)), jnp.float32)
    mask = jnp.ones((r, a, e, k), bool).at[..., 2].set(False)
    plain = gae_token(values, rewards, dones, boot, mask, _chain(False), 0.9, 0.8, 1.0)
    same = gae_token(values, rewards, dones, boot, mask, _chain(True), 0.9, 0.8, 1.0)
    np.testing.assert_allclose(same[0], plain[0], rtol=1e-6, atol=1e-6)
    idle = mask.at[1, 1, 0].set(False)
    adv, ret = gae_token(values, rewards, dones, boot, idle, _chain(True), 0.9, 0.8, 1.0)
    assert not np.any(np.asarray(adv[1, 1, 0])) and not np.any(np.asarray(ret[1, 1, 0]))
    # Agent 0 now bootstraps from agent 2's first token, as if agent 1 were not there.
    two = CreditOrder(order=(0, 1), successor=(1, 0), next_round=(False, True))
    sub = gae_token(values[1:, ::2, :1], rewards[1:, ::2, :1], dones[1:, :1], boot[:1],
                    mask[1:, ::2, :1], two, 0.9, 0.8, 1.0)
    np.testing.assert_allclose(adv[1, ::2, 0], sub[0][0, :, 0], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- the rollout, host-parsed


def _orchestrated_run(script, *, rounds, horizon, envs=1):
    team = team_from_dicts(ORCH)
    layout = build_layout(team, TOK, "reference")
    task = build_math_task([MathProblem("2+3?", "5", "0")], TOK)
    size = state_capacity(layout, task.table.tokens.shape[1], K, team.num_agents, horizon)
    config = RolloutConfig(num_rounds=rounds, horizon=horizon, obs_tokens=512,
                           action_tokens=K, reward_placement="last")
    rollout = make_rollout(team, layout, task.table, scripted_policy(script),
                           task.reward_fn(TOK, team.answer_mask), config,
                           router=host_router(team, TOK))
    game = init_game(layout, task.table, envs, size, jax.random.key(0))
    return rollout.compile()(None, game, jax.random.key(1))


def test_uncalled_agents_have_no_action_and_are_not_seen():
    replies = {0: "<call>checker</call>", 1: "\\boxed{4}", 2: "\\boxed{5}"}
    _, traj = _orchestrated_run(lambda agent, _: replies[agent], rounds=1, horizon=3)
    mask = np.asarray(traj.action_mask)
    assert mask[0, 0, 0].any() and mask[0, 2, 0].any()
    assert not mask[0, 1, 0].any()  # the solver was not called: no decision
    assert not np.asarray(traj.action_tokens)[0, 1, 0].any()
    checker_obs = _text(traj.obs_tokens[0, 2, 0], traj.obs_mask[0, 2, 0])
    assert "<call>checker</call>" in checker_obs and "solver" not in checker_obs
    # The checker answered right: score 1, credited to the last decision made (checker).
    np.testing.assert_allclose(np.asarray(traj.rewards)[0, :, 0], [0, 0, 1])
    assert bool(traj.dones[0, 0])


def test_done_ends_the_episode_and_no_tag_calls_the_default():
    def script(agent, obs):
        if agent == 0:  # the orchestrator: silent in round 1, done in round 2
            return "<done/>" if "judge" in obs else "let me think"
        return "\\boxed{7}"  # wrong answers: the episode goes on until done
    _, traj = _orchestrated_run(script, rounds=3, horizon=5)
    mask = np.asarray(traj.action_mask)[:, :, 0].any(-1)  # [R, A]
    np.testing.assert_array_equal(mask, [[1, 1, 0], [1, 0, 0], [1, 1, 0]])
    np.testing.assert_array_equal(np.asarray(traj.dones)[:, 0], [False, True, False])
    np.testing.assert_array_equal(np.asarray(traj.rewards)[:, :, 0], 0.0)
    # The history of round 2 holds the orchestrator's and the solver's lines, no checker.
    obs = _text(traj.obs_tokens[1, 0, 0], traj.obs_mask[1, 0, 0])
    assert "solver: \\boxed{7}" in obs and "checker:" not in obs


def test_gae_skipping_passes_over_an_idle_member_of_the_next_wave():
    """Orchestrator, then two workers in one wave: when worker_a is not called, the
    orchestrator bootstraps from worker_b (the decision made after it), not the next round."""
    credit = CreditOrder.from_graph(load_team("token_route").graph)
    assert credit.successor[0] == 1 and credit.skip_idle
    rng = np.random.default_rng(2)
    values = jnp.asarray(rng.normal(size=(1, 3, 1)), jnp.float32)
    rewards = jnp.asarray([[[0.0], [0.0], [1.0]]], jnp.float32)
    dones = jnp.ones((1, 1), bool)
    acted = jnp.asarray([[[True], [False], [True]]])
    adv, _ = gae_action(values, rewards, dones, jnp.zeros((1,)), credit, 0.9, 0.8, acted)
    v = np.asarray(values)[0, :, 0]
    a_b = 1.0 - v[2]
    np.testing.assert_allclose(np.asarray(adv)[0, :, 0],
                               [0.9 * v[2] - v[0] + 0.9 * 0.8 * a_b, 0.0, a_b], rtol=1e-5)


# ------------------------------------------------- end to end: the text form, tiny model


def test_tiny_math_orchestrated_team_trains_end_to_end(tmp_path):
    """math_orchestrated on the tiny random decoder (byte-level tokenizer): the host parses
    the orchestrator's text between waves. The random orchestrator writes no tag, so only
    its default call (the solver) acts: the checker has no decision and no response."""
    import importlib

    from marft_jax.training.config import finalize
    from marft_jax.training.loop import train
    from marft_jax.training.run_dir import prepare_run_dir, read_metrics

    config = importlib.import_module("configs.math_orchestrated").get_config()
    config.model.name = "tiny"
    config.model.tiny.update(vocab_size=259, hidden_size=32, intermediate_size=64,
                             num_layers=1, max_position_embeddings=4096)
    config.task.update(train_problems=8, heldout_problems=2)
    config.rollout.update(num_envs=2, num_rounds=2, horizon=2)
    config.sampling.update(max_new_tokens=6, temperature=1.0)
    config.ppo.update(num_minibatches=1, critic_trunk="base", critic_hidden=(16,))
    config.train.update(iterations=1, eval_problems=2, eval_batch=2, checkpoint_every=1,
                        eval_before=False, eval_sampled=False)
    exp = finalize(config)
    assert exp.team.orchestrator == 0
    run = tmp_path / "run"
    prepare_run_dir(exp.config, run, resume=False)
    summary = train(exp, run)
    assert summary["iterations"] == 1
    record = [r for r in read_metrics(run) if "rollout/score" in r][0]
    update = {k: v for k, v in record.items() if k.startswith("update/")}
    assert update and all(np.isfinite(v) for v in update.values() if v is not None)
    rows = [json.loads(line) for line in (run / "responses_after.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    assert all(row["checker"] == "" and row["orchestrator"] for row in rows), rows
    # The evaluation scores each agent over the plays it was called in, and says how often.
    called = {k.split("called/")[1]: v for k, v in summary["eval_after"].items() if "called/" in k}
    assert called == {"solver": 1.0, "checker": 0.0}, summary["eval_after"]
    assert summary["eval_after"]["accuracy/checker"] == 0.0


def test_group_normalize_uses_only_the_decisions_made():
    from marft_jax.algorithms.advantages import group_normalize
    x = jnp.asarray([1.0, 0.0, 3.0, 0.0])
    valid = jnp.asarray([True, False, True, True])
    out = np.asarray(group_normalize(x, 4, 0.0, valid))
    ref = np.asarray([1.0, 3.0, 0.0])
    np.testing.assert_allclose(out[[0, 2, 3]], (ref - ref.mean()) / ref.std(), rtol=1e-6)
    assert out[1] == 0.0
    np.testing.assert_allclose(group_normalize(x, 4, 1e-8, jnp.ones(4, bool)),
                               group_normalize(x, 4, 1e-8), rtol=1e-6)
