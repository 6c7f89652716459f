"""Tests of flexmg.profiles (profile files, teams) and flexmg.graph (the dependency function D)."""

import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from marft_jax.errors import ConfigError
from marft_jax.flexmg.graph import DependencyGraph
from marft_jax.flexmg.profiles import (AgentProfile, Team, data_root, load_team,
                                       resolve_profile_path, team_from_dicts)

REFERENCE_TEAMS = {  # name: (roles, index of the with_answer agent)
    "math_dual": (("reasoner", "actor"), 1),
    "math_trio": (("reasoner", "actor", "verifier"), 1),
    "math_quartet": (("problem_decomposer", "planner", "executor", "verifier"), 2),
    "math_octet": (("input_parser", "subproblem_generator", "method_selector", "step_solver",
                    "numeric_evaluator", "symbolic_manipulator", "result_verifier",
                    "aggregator_explainer"), 7),
}


def _reference_file(name):
    path = data_root() / "profiles" / f"{name}.json"
    if not path.is_file():
        pytest.skip(f"reference profiles absent: {path} not found (set MARFT_JAX_DATA to the "
                    f"shared data root)")
    return path


def _profile(role, **fields):
    return {"role": role, "prompt": f"<|im_start|>system: you are {role}.<|im_end|>",
            "with_answer": False, **fields}


def _write(tmp_path, content, name="team.json"):
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def _load_error(path, *fragments):
    """Loads `path`, expects a ConfigError naming the file and every fragment."""
    with pytest.raises(ConfigError) as info:
        load_team(path)
    message = str(info.value)
    assert str(path) in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


# ----------------------------------------------------------------------- reference profiles


@pytest.mark.parametrize("name", sorted(REFERENCE_TEAMS))
def test_reference_profiles_load_as_chains(name):
    path = _reference_file(name)
    roles, answering = REFERENCE_TEAMS[name]
    team = load_team(name)
    num = len(roles)
    assert team.source == str(path)
    assert team.roles == roles
    assert team.num_agents == num
    assert team.answer_mask == tuple(i == answering for i in range(num))
    assert team.adapter_names == roles and team.adapter_index == tuple(range(num))
    assert all(p.depends_on is None and p.prompt.startswith("<|im_start|>system:")
               for p in team.profiles)
    graph = team.graph
    assert graph.is_chain
    assert graph.waves == tuple((i,) for i in range(num))
    assert graph.num_waves == num
    assert graph.order == tuple(range(num))
    np.testing.assert_array_equal(graph.adjacency, np.tri(num, k=-1, dtype=bool))
    assert load_team(path) == team  # by path and by name: the same team


def test_reference_device_field_is_ignored_with_one_log_line(caplog, monkeypatch):
    """One line per file and process, however often it loads (a study finalizes a config
    per seed)."""
    from marft_jax.flexmg import profiles

    monkeypatch.setattr(profiles, "_DEVICE_FIELD_REPORTED", set())
    _reference_file("math_dual")
    with caplog.at_level(logging.INFO, logger="absl"):
        team = load_team("math_dual")
        assert load_team("math_dual") == team
    lines = [r.getMessage() for r in caplog.records if "'device'" in r.getMessage()]
    assert len(lines) == 1 and "math_dual.json" in lines[0] and "[0, 1]" in lines[0]
    assert not hasattr(team.profiles[0], "device")


def test_device_field_in_own_file_is_ignored(tmp_path, caplog):
    path = _write(tmp_path, [_profile("a", device="cuda:1"), _profile("b", device="cuda:2")])
    with caplog.at_level(logging.INFO, logger="absl"):
        team = load_team(path)
        load_team(path)
    assert team.roles == ("a", "b")
    assert sum("'device'" in r.getMessage() for r in caplog.records) == 1


# ----------------------------------------------------------------------- shipped teams


def test_math_parallel_runs_two_solvers_in_one_wave():
    team = load_team("math_parallel")
    assert team.source.endswith("configs/profiles/math_parallel.json")
    assert team.roles == ("solver_a", "solver_b", "aggregator")
    assert team.answer_mask == (True, True, True)
    graph = team.graph
    assert graph.waves == ((0, 1), (2,))
    assert graph.wave_of == (0, 0, 1)
    assert graph.order == (0, 1, 2)
    assert not graph.is_chain
    assert graph.parents(2) == (0, 1) and graph.parents(0) == () and graph.parents(1) == ()
    assert [graph.next_decision(i) for i in range(3)] == [2, 2, 3]
    assert graph.bootstrap_agent == (2, 2, 0)
    assert graph.bootstrap_next_round == (False, False, True)


def test_math_single_is_one_answering_agent():
    team = load_team("math_single")
    assert team.num_agents == 1 and team.answer_mask == (True,)
    assert team.graph.waves == ((0,),)
    assert team.graph.next_decision(0) == 1 and team.graph.bootstrap_agent == (0,)


def test_project_teams_take_precedence_and_data_root_is_overridable(tmp_path, monkeypatch):
    (tmp_path / "profiles").mkdir()
    _write(tmp_path / "profiles", [_profile("x")], name="math_parallel.json")
    _write(tmp_path / "profiles", [_profile("only_here")], name="extra_team.json")
    monkeypatch.setenv("MARFT_JAX_DATA", str(tmp_path))
    assert load_team("math_parallel").roles[0] == "solver_a"
    team = load_team("extra_team")
    assert team.roles == ("only_here",)
    assert team.source == str(tmp_path / "profiles" / "extra_team.json")
    with pytest.raises(ConfigError, match="'no_such_team'.*extra_team"):
        resolve_profile_path("no_such_team")


# ----------------------------------------------------------------------- graphs


def test_diamond_graph_waves_and_bootstrap():
    team = team_from_dicts([
        _profile("top", depends_on=[]),
        _profile("left", depends_on=["top"]),
        _profile("right", depends_on=["top"]),
        _profile("bottom", depends_on=["right", "left"], with_answer=True),
    ])
    graph = team.graph
    expected = np.zeros((4, 4), dtype=bool)
    expected[1, 0] = expected[2, 0] = expected[3, 1] = expected[3, 2] = True
    np.testing.assert_array_equal(graph.adjacency, expected)
    assert graph.waves == ((0,), (1, 2), (3,))
    assert team.dependencies == ((), (0,), (0,), (1, 2))
    assert [graph.next_decision(i) for i in range(4)] == [1, 3, 3, 4]
    assert graph.bootstrap_agent == (1, 3, 3, 0)
    text = graph.to_text()
    assert "wave 1: left" in text and "wave 1: right" in text and "<- left, right" in text
    dot = graph.to_dot()
    for edge in ('"top" -> "left"', '"top" -> "right"', '"left" -> "bottom"',
                 '"right" -> "bottom"'):
        assert edge in dot
    assert dot.count("->") == 4 and "rank=same" in dot


def test_decision_order_differs_from_profile_order():
    # Profile order: referee, worker_b, worker_a; referee sees both workers, worker_b sees worker_a.
    team = team_from_dicts([
        _profile("referee", depends_on=["worker_a", "worker_b"]),
        _profile("worker_b", depends_on=["worker_a"]),
        _profile("worker_a", depends_on=[]),
    ])
    graph = team.graph
    assert graph.waves == ((2,), (1,), (0,))
    assert graph.order == (2, 1, 0) and graph.position == (2, 1, 0)
    assert [graph.next_decision(i) for i in range(3)] == [3, 2, 1]
    assert graph.bootstrap_agent == (2, 0, 1)
    assert graph.bootstrap_next_round == (True, False, False)


def test_chain_next_decision_is_the_reference_recursion():
    graph = team_from_dicts([_profile(r) for r in "abcde"]).graph
    assert graph.is_chain
    assert [graph.next_decision(i) for i in range(5)] == [1, 2, 3, 4, 5]
    assert graph.bootstrap_agent == (1, 2, 3, 4, 0)
    assert graph.bootstrap_next_round == (False,) * 4 + (True,)
    with pytest.raises(IndexError):
        graph.next_decision(5)


def test_mixed_explicit_and_default_dependencies():
    team = team_from_dicts([_profile("a"), _profile("b", depends_on=[]), _profile("c")])
    assert team.dependencies == ((), (), (0, 1))
    assert team.graph.waves == ((0, 1), (2,))


def test_dependency_mask_switches_edges_off_never_on():
    graph = team_from_dicts([_profile(r) for r in "abc"]).graph
    static = graph.dependency_mask(None)
    np.testing.assert_array_equal(static, graph.adjacency)
    static[1, 0] = False  # a copy: the graph is unchanged
    assert graph.adjacency[1, 0] and not graph.adjacency.flags.writeable
    round_mask = np.ones((3, 3), dtype=bool)
    round_mask[2, 0] = False  # c stops seeing a this round
    out = graph.dependency_mask(round_mask)
    expected = np.tri(3, k=-1, dtype=bool)
    expected[2, 0] = False
    np.testing.assert_array_equal(out, expected)
    assert not out[0, 1] and not out[0, 2]  # edges outside D stay off
    batched = np.stack([round_mask, np.zeros((3, 3), bool)])  # [rounds=2, agents, agents]
    out = graph.dependency_mask(batched)
    assert out.shape == (2, 3, 3)
    np.testing.assert_array_equal(out[0], expected)
    assert not out[1].any()


def test_dependency_mask_under_jit():
    graph = team_from_dicts([_profile(r) for r in "abc"]).graph
    out = jax.jit(graph.dependency_mask)(jnp.eye(3, dtype=bool) | jnp.tri(3, k=-1, dtype=bool))
    assert isinstance(out, jax.Array)
    np.testing.assert_array_equal(np.asarray(out), graph.adjacency)


@pytest.mark.parametrize("mask, fragment", [
    (np.ones((3, 2), bool), "shape (3, 2)"),
    (np.ones((2, 2), bool), "shape (2, 2)"),
    (np.ones((3,), bool), "shape (3,)"),
    (np.ones((3, 3), np.int32), "dtype bool"),
])
def test_dependency_mask_rejects_bad_masks(mask, fragment):
    graph = team_from_dicts([_profile(r) for r in "abc"], source="inline_team").graph
    with pytest.raises(ValueError, match="round mask") as info:
        graph.dependency_mask(mask)
    assert fragment in str(info.value) and "inline_team" in str(info.value)


def test_graph_rejects_bad_adjacency():
    with pytest.raises(ConfigError, match="bool"):
        DependencyGraph(roles=("a", "b"), adjacency=np.zeros((2, 2), np.int32))
    with pytest.raises(ConfigError, match=r"shape \(2, 3\)"):
        DependencyGraph(roles=("a", "b"), adjacency=np.zeros((2, 3), bool))
    with pytest.raises(ConfigError, match="outside 0..1"):
        DependencyGraph.from_dependencies(("a", "b"), ((), (2,)), source="g.json")


# ----------------------------------------------------------------------- adapters, overrides


def test_shared_adapters():
    team = team_from_dicts([
        _profile("solver_a", adapter="solver"),
        _profile("solver_b", adapter="solver", depends_on=[]),
        _profile("referee", depends_on=["solver_a", "solver_b"]),
    ])
    assert team.adapter_names == ("solver", "referee")
    assert team.num_adapters == 2 < team.num_agents == 3
    assert team.adapter_index == (0, 0, 1)


def test_generation_overrides_and_inline_profiles():
    team = Team(profiles=(
        AgentProfile("a", "p", max_new_tokens=64, temperature=0),
        AgentProfile("b", "q", with_answer=True, depends_on=["a"]),
    ))
    assert team.profiles[1].depends_on == ("a",) and team.profiles[0].adapter == "a"
    assert team.max_new_tokens_per_agent(256) == (64, 256)
    assert team.temperature_per_agent(0.5) == (0.0, 0.5)
    assert hash(team) == hash(Team(profiles=team.profiles))


# ----------------------------------------------------------------------- bad input


def test_cycle_names_file_field_and_roles(tmp_path):
    path = _write(tmp_path, [
        _profile("tail", depends_on=["x"]),
        _profile("x", depends_on=["y"]),
        _profile("y", depends_on=["z"]),
        _profile("z", depends_on=["x"]),
        _profile("free", depends_on=[]),
    ])
    message = _load_error(path, "'depends_on'", "cycle", "x -> y -> z -> x")
    assert "tail" not in message and "free" not in message


def test_two_cycle_in_otherwise_chained_team(tmp_path):
    path = _write(tmp_path, [_profile("a", depends_on=["b"]), _profile("b")])
    _load_error(path, "'depends_on'", "a -> b -> a")


@pytest.mark.parametrize("content, fragments", [
    ("[]", ["empty"]),
    ("{\"role\": \"a\"}", ["top level", "list"]),
    ("[{\"role\": \"a\",}]", ["invalid JSON", "line 1"]),
    ([_profile("a"), "b"], ["profile 1", "object"]),
    ([_profile("a"), {"role": "b", "with_answer": True}], ["profile 1", "role 'b'", "'prompt'"]),
    ([{"prompt": "p"}], ["profile 0", "missing field 'role'"]),
    ([_profile("a", with_answer="yes")], ["role 'a'", "'with_answer'"]),
    ([_profile("a", prompt=3)], ["role 'a'", "'prompt'"]),
    ([_profile("")], ["profile 0", "'role'"]),
    ([_profile("a"), _profile("a")], ["profile 1", "'role'", "unique"]),
    ([_profile("a", depend_on=[])], ["role 'a'", "unknown field 'depend_on'"]),
    ([_profile("a"), _profile("b", depends_on=["ghost"])], ["role 'b'", "'depends_on'",
                                                            "'ghost'"]),
    ([_profile("a", depends_on=["a"])], ["role 'a'", "'depends_on'", "itself"]),
    ([_profile("a"), _profile("b", depends_on="a")], ["role 'b'", "'depends_on'", "list"]),
    ([_profile("a"), _profile("b", depends_on=["a", "a"])], ["'depends_on'", "twice"]),
    ([_profile("a", adapter="")], ["role 'a'", "'adapter'"]),
    ([_profile("a", max_new_tokens=0)], ["role 'a'", "'max_new_tokens'"]),
    ([_profile("a", max_new_tokens=True)], ["role 'a'", "'max_new_tokens'"]),
    ([_profile("a", temperature=-0.1)], ["role 'a'", "'temperature'"]),
    ("[{\"role\": \"a\", \"prompt\": \"p\", \"temperature\": NaN}]", ["'temperature'"]),
])
def test_bad_profile_files_name_file_and_field(tmp_path, content, fragments):
    _load_error(_write(tmp_path, content), *fragments)


def test_missing_file_and_unknown_name(tmp_path):
    _load_error(tmp_path / "absent.json", "not found")
    with pytest.raises(ConfigError, match="'no_such_team'.*math_parallel"):
        load_team("no_such_team")


def test_team_from_dicts_names_source():
    with pytest.raises(ConfigError, match=r"^cfg\.py: profile 0 \(role 'a'\): field 'with_answer'"):
        team_from_dicts([_profile("a", with_answer=1)], source="cfg.py")
    with pytest.raises(ConfigError, match="^cfg.py: the top level must be a list"):
        team_from_dicts("a", source="cfg.py")


@pytest.mark.parametrize("field, name, reason", [
    ("role", "../escape", "path syntax"), ("role", "a/b", "path syntax"),
    ("role", "..", "path syntax"), ("role", "back\\slash", "path syntax"),
    ("role", "tab\there", "control"), ("role", "zero\u200bwidth", "invisible"),
    ("role", "Judge", "reserved"), ("role", "user", "reserved"), ("role", " pad", "white"),
    ("role", "x" * 65, "longer"), ("adapter", "../shared", "path syntax"),
])
def test_unusable_role_and_adapter_names_are_refused_with_the_reason(field, name, reason):
    profile = _profile("solver", with_answer=True, **({field: name} if field == "adapter"
                                                      else {}))
    if field == "role":
        profile["role"] = name
    with pytest.raises(ConfigError, match=rf"field '{field}' .*{reason}"):
        team_from_dicts([profile])


@pytest.mark.parametrize("first, second", [("Solver", "solver"), ("ﬁnder", "finder")])
def test_roles_equal_up_to_case_or_unicode_normalisation_are_refused(first, second):
    with pytest.raises(ConfigError, match="up to case or Unicode normalisation"):
        team_from_dicts([_profile(first), _profile(second, with_answer=True)])
