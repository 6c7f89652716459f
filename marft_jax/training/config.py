"""The experiment config: one ml_collections schema, and `finalize` that validates it.

Every `configs/*.py` starts from `base_config()` and overrides fields; entry points load
it with `config_flags.DEFINE_config_file("config")`, so any field is overridable on the
command line (`--config.ppo.clip_eps=0.1`). `finalize(config)` checks every field (a bad
one raises `ConfigError` naming it: `config field 'ppo.lr_actor': ...`) and derives the
typed pieces the run is built from.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections

from marft_jax.algorithms.config import PPO_RULES, PPOConfig
from marft_jax.envs.registry import get_task
from marft_jax.errors import ConfigError
from marft_jax.flexmg.layout import LAYOUTS
from marft_jax.flexmg.rollout import PLACEMENTS
from marft_jax.models.config import DTYPES, LORA_TARGETS, LoraConfig, ModelConfig
from marft_jax.parallel import MeshConfig, check_env_split
from marft_jax.training.sections import (RolloutSettings, SamplingConfig, TaskConfig,
                                         TrainConfig, defaults, from_section)
from marft_jax.validation import (FLAG, NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE,
                                  POSITIVE_INT, Rule)

# `lora.num_adapters` value meaning "as many adapters as the team names" (not an adapter index).
ADAPTERS_FROM_TEAM = -1

# Range and type of every numeric or boolean field ("section.name"; `ppo.*` from
# `PPO_RULES`). Checked first, so a NaN, an inf, a wrong sign or a float where an integer
# belongs is named before anything is built from it.
FIELD_RULES: dict[str, Rule] = {
    "seed": NON_NEGATIVE_INT,
    **{f"model.tiny.{n}": POSITIVE_INT for n in (
        "vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
        "num_kv_heads", "head_dim")},
    "model.tiny.initializer_range": POSITIVE,
    "lora.rank": POSITIVE_INT, "lora.alpha": POSITIVE,
    "team.independent": FLAG,
    **{f"task.{n}": POSITIVE_INT for n in ("train_problems", "digits", "terms",
                                           "num_symbols")},
    "task.heldout_problems": NON_NEGATIVE_INT, "task.split_seed": NON_NEGATIVE_INT,
    "task.code_workers": POSITIVE_INT, "task.code_timeout_s": POSITIVE,
    "task.code_memory_mb": NON_NEGATIVE_INT,
    **{f"rollout.{n}": POSITIVE_INT for n in ("num_envs", "num_rounds", "horizon")},
    "rollout.obs_tokens": NON_NEGATIVE_INT, "rollout.cross_tokens": NON_NEGATIVE_INT,
    "rollout.shared_prefix": FLAG,
    "sampling.max_new_tokens": POSITIVE_INT, "sampling.top_k": NON_NEGATIVE_INT,
    "sampling.decode_chunk": NON_NEGATIVE_INT, "sampling.merge_adapter": FLAG,
    "sampling.temperature": NON_NEGATIVE, "sampling.top_p": Rule(low=0.0, high=1.0,
                                                                 low_open=True),
    **{f"ppo.{n}": rule for n, rule in PPO_RULES.items()},
    **{f"train.{n}": POSITIVE_INT for n in ("keep_checkpoints", "log_every", "eval_samples")},
    # iterations = 0: evaluate the untrained team only (baselines of a study).
    **{f"train.{n}": NON_NEGATIVE_INT for n in ("iterations", "eval_every", "checkpoint_every",
                                                "eval_problems", "eval_batch")},
    **{f"train.{n}": FLAG for n in ("eval_greedy", "eval_sampled", "eval_before",
                                    "release_host_memory")},
    "train.rollback_after": NON_NEGATIVE_INT, "train.max_rollbacks": NON_NEGATIVE_INT,
    "train.memory_budget_gb": NON_NEGATIVE,
    "faults.iteration": POSITIVE_INT, "faults.agent": NON_NEGATIVE_INT,
    "faults.count": POSITIVE_INT,
}
# Sections whose fields are all known (`model.tiny` may carry any `ModelConfig` field).
_CLOSED_SECTIONS = ("model", "lora", "team", "task", "rollout", "sampling", "train",
                    "faults")


def base_config() -> ml_collections.ConfigDict:
    """All fields with their defaults (the reference's where it has one)."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.model = ml_collections.ConfigDict(dict(
        name="smollm2-135m-instruct",  # registered name, HF directory, .gguf, or "tiny"
        dtype="float32",
        # Random tiny decoder for tests and smoke runs (used when name == "tiny").
        tiny=dict(model_type="llama", vocab_size=64, hidden_size=32, intermediate_size=64,
                  num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                  initializer_range=0.02),
    ))
    c.lora = ml_collections.ConfigDict(dict(
        rank=8, alpha=16.0, targets=("q_proj", "v_proj"),
        num_adapters=ADAPTERS_FROM_TEAM,  # as many as the team names
    ))
    c.team = ml_collections.ConfigDict(dict(
        profiles="math_dual", layout="chat",
        independent=False,  # True: no agent sees another's response (the IPPO baseline)
        # Heterogeneous teams (profiles naming different `model`s): the base whose trunk
        # the critic reads, as the profiles name it; "" = the first agent's base.
        critic_base="",
    ))
    # The sections typed in `training.sections` (and `parallel.MeshConfig`) take their
    # fields and defaults from those dataclasses, documented there.
    c.task = ml_collections.ConfigDict(defaults(TaskConfig))
    c.rollout = ml_collections.ConfigDict(defaults(RolloutSettings))
    c.sampling = ml_collections.ConfigDict(defaults(SamplingConfig))
    c.ppo = ml_collections.ConfigDict({k: v for k, v in dataclasses.asdict(PPOConfig()).items()})
    c.ppo.critic_hidden = tuple(c.ppo.critic_hidden)
    c.mesh = ml_collections.ConfigDict(defaults(MeshConfig))
    c.train = ml_collections.ConfigDict(defaults(TrainConfig))
    # Fault injection for tests (see training/faults.py): "nan_loss", "inf_grad" or
    # "nan_critic" at iteration `iteration` (for `count` iterations) and agent `agent`.
    c.faults = ml_collections.ConfigDict(dict(kind="none", iteration=1, agent=0, count=1))
    return c


@dataclasses.dataclass(frozen=True)
class Experiment:
    """The validated, typed form of a config.

    Attributes:
        config: the ConfigDict it was finalized from, only for the run directory's
            `config.json` and the resume comparison; code reads the typed fields.
        faults: the `faults` section (`training.faults`; kind "none" without one).
    """

    config: ml_collections.ConfigDict
    seed: int
    model_name: str
    dtype: str
    tiny: dict[str, Any] | None
    lora: LoraConfig
    team: Any  # flexmg.profiles.Team
    layout: str
    task: TaskConfig
    rollout: RolloutSettings
    sampling: SamplingConfig
    ppo: PPOConfig
    train: TrainConfig
    mesh: MeshConfig = MeshConfig()
    critic_base: str = ""  # `team.critic_base` (heterogeneous teams)
    faults: dict[str, Any] = dataclasses.field(
        default_factory=lambda: dict(kind="none", iteration=1, agent=0, count=1))


def _fail(field: str, message: str):
    raise ConfigError(f"config field '{field}': {message}")


def _lookup(c: ml_collections.ConfigDict, field: str):
    """The value at a dotted path, or `_MISSING`."""
    node = c
    for part in field.split("."):
        if not hasattr(node, "keys") or part not in node:
            return _MISSING
        node = node[part]
    return node


_MISSING = object()


def check_fields(c: ml_collections.ConfigDict) -> None:
    """Unknown fields, and `FIELD_RULES` (types, finiteness, signs, ranges).

    Raises:
        ConfigError: naming the first bad field and the value it holds.
    """
    known = base_config()
    for section in _CLOSED_SECTIONS:
        if section not in c:
            continue
        unknown = sorted(set(c[section].keys()) - set(known[section].keys()))
        if unknown:
            _fail(f"{section}.{unknown[0]}", f"is not a {section} setting")
    if c.model.get("name") == "tiny":
        fields = {f.name for f in dataclasses.fields(ModelConfig)} - {"dtype"}
        unknown = sorted(set(c.model.tiny.keys()) - fields)
        if unknown:
            _fail(f"model.tiny.{unknown[0]}", "is not a ModelConfig field")
    for field, rule in FIELD_RULES.items():
        value = _lookup(c, field)
        if value is _MISSING:
            if field.startswith("model.tiny.") and c.model.name != "tiny":
                continue
            if field.startswith("faults.") and "faults" not in c:
                continue  # an optional section
            if field.startswith("task.code_") and c.task.get("kind") != "code":
                continue  # configs saved before the code task
            if field in ("train.memory_budget_gb", "train.release_host_memory"):
                continue  # configs saved before them: TrainConfig's defaults
            if field in ("seed",) or not field.startswith("ppo."):
                _fail(field, "is missing")
            continue  # a PPO field left out takes PPOConfig's default
        problem = rule.problem(value)
        if problem:
            _fail(field, problem)


def finalize(config: ml_collections.ConfigDict) -> Experiment:
    """Validates every field and derives the typed experiment.

    Raises:
        ConfigError: naming the first bad field (`config field 'section.name': ...`).
    """
    from marft_jax.flexmg.profiles import load_team

    c = config
    for section in ("model", "lora", "team", "task", "rollout", "sampling", "ppo", "train"):
        if section not in c:
            _fail(section, "section is missing")
    check_fields(c)
    if c.model.dtype not in DTYPES:
        _fail("model.dtype", f"{c.model.dtype!r} is not one of {list(DTYPES)}")
    if c.sampling.get("dtype", "") not in ("", *DTYPES):
        _fail("sampling.dtype", f"{c.sampling.dtype!r} is not one of {['', *DTYPES]} "
                                "('' = model.dtype)")
    targets = tuple(c.lora.targets)
    bad = [t for t in targets if t not in LORA_TARGETS]
    if bad or not targets:
        _fail("lora.targets", f"unknown or empty projections {bad or targets}; choose from "
                              f"{list(LORA_TARGETS)}")
    if c.team.layout not in LAYOUTS and not get_task(c.task.kind).jax_native:
        _fail("team.layout", f"{c.team.layout!r} is not one of {list(LAYOUTS)}")
    try:
        team = load_team(c.team.profiles)
    except ConfigError as e:
        raise ConfigError(f"config field 'team.profiles': {e}") from None
    if not any(team.answer_mask):
        _fail("team.profiles", f"{team.source}: no agent has \"with_answer\": true, so "
                               "every reward would be 0; mark the agent whose answer is graded")
    if c.team.get("independent", False):
        if team.orchestrator is not None:
            _fail("team.independent", f"{team.source} is an orchestrated team (profile "
                                      f"{team.orchestrator} has 'calls'); its agents act "
                                      "after the orchestrator by design")
        team = team.independent()
    num_adapters = c.lora.num_adapters
    if num_adapters == ADAPTERS_FROM_TEAM:
        num_adapters = team.num_adapters
    elif not isinstance(num_adapters, int) or num_adapters < 1:
        _fail("lora.num_adapters", f"must be -1 (from the team) or ≥ 1, got {num_adapters!r}")
    elif team.num_adapters > num_adapters:
        _fail("lora.num_adapters", f"{num_adapters} adapters configured but the team "
                                   f"{team.source} names {team.num_adapters} "
                                   f"({', '.join(team.adapter_names)})")
    lora = LoraConfig(num_adapters=num_adapters, rank=c.lora.rank, alpha=float(c.lora.alpha),
                      targets=targets)

    from marft_jax.training.faults import FAULT_KINDS, fault_settings

    faults = fault_settings(c)
    if faults["kind"] not in FAULT_KINDS:
        _fail("faults.kind", f"{faults['kind']!r} is not one of {list(FAULT_KINDS)}")
    if faults["agent"] >= team.num_agents:
        _fail("faults.agent", f"agent {faults['agent']} does not exist; the team has "
                              f"{team.num_agents}")
    from marft_jax.envs.math.grader import GRADERS

    task = from_section(TaskConfig, c.task)
    if task.grader not in GRADERS:
        _fail("task.grader", f"{task.grader!r} is not one of {list(GRADERS)}")
    if task.grader == "math_verify":
        import importlib.util

        if importlib.util.find_spec("math_verify") is None:
            _fail("task.grader", "'math_verify' needs the math-verify package "
                                 "(pip install math-verify==0.9.0)")
    get_task(task.kind).check(task)
    if c.rollout.reward_placement not in PLACEMENTS:
        _fail("rollout.reward_placement", f"{c.rollout.reward_placement!r} is not one of "
                                          f"{list(PLACEMENTS)}")
    ppo_fields = {f.name for f in dataclasses.fields(PPOConfig)}
    unknown = sorted(set(c.ppo.keys()) - ppo_fields)
    if unknown:
        _fail(f"ppo.{unknown[0]}", "is not a PPO setting")
    try:
        ppo = PPOConfig(**{k: (tuple(v) if isinstance(v, (list, tuple)) else v)
                           for k, v in c.ppo.items()})
    except ConfigError as e:
        raise ConfigError(f"config field 'ppo': {e}") from None
    if ppo.spec.advantage == "grpo" and ppo.group_size < 2:
        _fail("ppo.group_size", f"GRPO compares samples of one problem: it needs a group of "
                                f"at least 2, got {ppo.group_size}")
    if ppo.spec.advantage == "grpo" and c.rollout.num_envs % ppo.group_size:
        _fail("ppo.group_size", f"rollout.num_envs={c.rollout.num_envs} is not a multiple of "
                                f"group_size={ppo.group_size}")
    if c.rollout.num_envs < ppo.num_minibatches:
        _fail("ppo.num_minibatches", f"{ppo.num_minibatches} minibatches need at least as many "
                                     f"envs (rollout.num_envs={c.rollout.num_envs})")

    critic_base = c.team.get("critic_base", "")
    if not isinstance(critic_base, str):
        _fail("team.critic_base", f"must be a model name as the profiles write it, got "
                                  f"{critic_base!r}")
    exp = Experiment(
        config=c, seed=int(c.seed), model_name=str(c.model.name), dtype=c.model.dtype,
        tiny=dict(c.model.tiny) if c.model.name == "tiny" else None, lora=lora, team=team,
        layout=c.team.layout, task=task, rollout=from_section(RolloutSettings, c.rollout),
        sampling=from_section(SamplingConfig, c.sampling), ppo=ppo,
        train=from_section(TrainConfig, c.train), mesh=_mesh_section(c),
        critic_base=critic_base, faults=faults)
    from marft_jax.training.bases import check_heterogeneous

    check_heterogeneous(exp)
    return exp


def _mesh_section(c) -> MeshConfig:
    """The `mesh` section (optional: one device without it), checked without devices
    (`MeshConfig` checks its own fields; here: unknown ones, and the env split)."""
    given = c.mesh.to_dict() if "mesh" in c else {}
    unknown = sorted(set(given) - set(defaults(MeshConfig)))
    if unknown:
        _fail(f"mesh.{unknown[0]}", "is not a mesh setting (data, fsdp, tp, mode)")
    mesh = MeshConfig(**given)
    if mesh.data > 0:  # a -1 axis is resolved against the devices (`Plan.check_envs`)
        check_env_split(c.rollout.num_envs, mesh.data * max(mesh.fsdp, 1), "rollout.num_envs")
    return mesh
