"""Agent profiles and teams: loading and validating the profile JSON files.

A profile file is a JSON list of objects, one per agent, in the reference format: `role`
(also the default LoRA adapter name), `prompt` (the system text) and `with_answer` (whether
the agent's output is graded); `device` is accepted and ignored. marft_jax adds optional
fields: `depends_on` (roles whose actions this agent sees; left out = every earlier profile,
the reference chain), `adapter` (LoRA adapter name, default the role; roles may share one),
the per-agent generation overrides `max_new_tokens` and `temperature`, and `model` (the
agent's own base model: a registered name, a Hugging Face directory or a .gguf file; left
out = the run's `model.name`). A team whose agents name different models is
*heterogeneous*: see `training/bases.py` and `flexmg/hetero.py`.

An *orchestrated* team (a dynamic topology, Flex-MG's D_t) has one profile with `calls`:
the orchestrator. It acts first in every round, and its action selects which of the roles
in `calls` act this round (and so whom the others see); `default_calls` are called when its
action names none. Roles not in `calls` act in every round unless the orchestrator says the
episode is done. See `flexmg/orchestration.py`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from absl import logging

from marft_jax.errors import ConfigError
from marft_jax.jsonfile import read_json
from marft_jax.paths import DATA_ENV_VAR, data_root, project_root
from marft_jax.flexmg.graph import DependencyGraph
from marft_jax.flexmg.names import (MAX_NAME_CHARS, RESERVED_NAMES,  # noqa: F401 (re-exported)
                                    name_problem, type_name, validate_roles)
from marft_jax.flexmg.names import where as _where
from marft_jax.flexmg.orchestration import validate_orchestration

_FIELDS = ("role", "prompt", "with_answer", "depends_on", "adapter", "max_new_tokens",
           "temperature", "calls", "default_calls", "model")
_IGNORED_FIELDS = ("device",)  # reference per-agent GPU placement; the mesh decides here
_REQUIRED_FIELDS = ("role", "prompt")


@dataclasses.dataclass(frozen=True)
class AgentProfile:
    """One agent of a team.

    Attributes:
        role: unique name of the agent; tags its actions in observations.
        prompt: system text prepended to the agent's observation.
        with_answer: whether the agent's output is graded by the environment.
        depends_on: roles whose actions this agent sees in the same round; None = every
            profile before it in file order (the reference chain); () = none.
        adapter: name of the LoRA adapter the agent uses; None at construction = the role.
        max_new_tokens: per-agent generation length; None = the run's default.
        temperature: per-agent sampling temperature (0 = greedy); None = the run's default.
        calls: roles this agent may call each round; set = the team's orchestrator.
        default_calls: roles called when the orchestrator's action names none (a subset of
            `calls`; text teams: the untrained orchestrator rarely writes a call tag).
        model: the agent's base model (registered name, HF directory or .gguf file); None =
            the run's `model.name`.
    """

    role: str
    prompt: str
    with_answer: bool = False
    depends_on: tuple[str, ...] | None = None
    adapter: str | None = None
    max_new_tokens: int | None = None
    temperature: float | None = None
    calls: tuple[str, ...] | None = None
    default_calls: tuple[str, ...] | None = None
    model: str | None = None

    def __post_init__(self):
        if self.adapter is None:
            object.__setattr__(self, "adapter", self.role)
        for name in ("depends_on", "calls", "default_calls"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))


@dataclasses.dataclass(frozen=True)
class Team:
    """The agents of a LaMAS, in profile order, validated together with their graph D.

    Attributes:
        profiles: the agents, in file order (the agent axis of every array).
        source: the profile file (or "<inline>"), named in error messages.
        graph: the dependency function D with its waves (derived, see graph.py).
    """

    profiles: tuple[AgentProfile, ...]
    source: str = "<inline>"
    graph: DependencyGraph = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        profiles = tuple(self.profiles)
        if not profiles:
            raise ConfigError(
                f"{self.source}: the profile list is empty; a team needs at least one profile")
        for index, profile in enumerate(profiles):
            if not isinstance(profile, AgentProfile):
                raise ConfigError(
                    f"{self.source}: profile {index} must be an AgentProfile, "
                    f"got {type(profile).__name__}")
            _validate_profile(profile, _where(self.source, index, profile.role))
        object.__setattr__(self, "profiles", profiles)
        validate_roles(profiles, self.source)
        graph = DependencyGraph.from_dependencies(self.roles, self.dependencies, self.source,
                                                  dynamic=self.orchestrator is not None)
        validate_orchestration(profiles, graph, self.source)
        object.__setattr__(self, "graph", graph)

    def independent(self) -> Team:
        """The same agents with no dependencies: each acts on the problem alone (IPPO).

        Refused for an orchestrated team (its agents act after the orchestrator by design).
        """
        if self.orchestrator is not None:
            raise ConfigError(f"{self.source}: field 'calls': an orchestrated team cannot "
                              "be made independent (team.independent)")
        return Team(profiles=tuple(dataclasses.replace(p, depends_on=())
                                   for p in self.profiles), source=self.source)

    @property
    def orchestrator(self) -> int | None:
        """Profile index of the orchestrator (the profile with `calls`), or None."""
        found = [i for i, p in enumerate(self.profiles) if p.calls is not None]
        return found[0] if found else None

    @property
    def callable_mask(self) -> tuple[bool, ...]:
        """Per agent, whether it acts only when the orchestrator calls it."""
        o = self.orchestrator
        called = () if o is None else self.profiles[o].calls
        return tuple(p.role in called for p in self.profiles)

    @property
    def default_call_mask(self) -> tuple[bool, ...]:
        """Per agent, whether it is called when the orchestrator's action names no one."""
        o = self.orchestrator
        called = () if o is None else (self.profiles[o].default_calls or ())
        return tuple(p.role in called for p in self.profiles)

    @property
    def num_agents(self) -> int:
        """Number of agents."""
        return len(self.profiles)

    @property
    def roles(self) -> tuple[str, ...]:
        """Agent roles in profile order."""
        return tuple(p.role for p in self.profiles)

    @property
    def adapter_names(self) -> tuple[str, ...]:
        """Unique LoRA adapter names, in order of first appearance."""
        return tuple(dict.fromkeys(p.adapter for p in self.profiles))

    @property
    def num_adapters(self) -> int:
        """Number of distinct LoRA adapters (≤ num_agents)."""
        return len(self.adapter_names)

    @property
    def adapter_index(self) -> tuple[int, ...]:
        """Per agent, the index of its adapter in `adapter_names` (the stacked LoRA axis)."""
        names = self.adapter_names
        return tuple(names.index(p.adapter) for p in self.profiles)

    @property
    def answer_mask(self) -> tuple[bool, ...]:
        """Per agent, whether its output is graded (`with_answer`)."""
        return tuple(p.with_answer for p in self.profiles)

    @property
    def dependencies(self) -> tuple[tuple[int, ...], ...]:
        """Per agent, the sorted indices of the agents it depends on (chain where unset)."""
        index = {role: i for i, role in enumerate(self.roles)}
        return tuple(
            tuple(range(i)) if p.depends_on is None
            else tuple(sorted(index[role] for role in p.depends_on))
            for i, p in enumerate(self.profiles))

    def base_models(self, default: str) -> tuple[str, ...]:
        """The distinct base models of the team, in order of first appearance (`model`, or
        `default`, the run's `model.name`, where a profile leaves it out)."""
        return tuple(dict.fromkeys(self.model_per_agent(default)))

    def model_per_agent(self, default: str) -> tuple[str, ...]:
        """Per agent, its base model's name (`default` where the profile names none)."""
        return tuple(default if p.model is None else p.model for p in self.profiles)

    def base_index(self, default: str) -> tuple[int, ...]:
        """Per agent, the index of its base in `base_models(default)`."""
        names = self.base_models(default)
        return tuple(names.index(m) for m in self.model_per_agent(default))

    def max_new_tokens_per_agent(self, default: int) -> tuple[int, ...]:
        """Per agent, its `max_new_tokens`, or `default` where the profile leaves it out."""
        return tuple(default if p.max_new_tokens is None else p.max_new_tokens
                     for p in self.profiles)

    def temperature_per_agent(self, default: float) -> tuple[float, ...]:
        """Per agent, its `temperature`, or `default` where the profile leaves it out."""
        return tuple(float(default if p.temperature is None else p.temperature)
                     for p in self.profiles)


# Profile files whose ignored 'device' fields were logged (a study or a benchmark
# finalizes one config per seed or variant, each loading the team).
_DEVICE_FIELD_REPORTED: set[str] = set()


def team_from_dicts(profiles: Sequence[Any], source: str = "<inline>") -> Team:
    """Builds a team from profile objects as they appear in a profile JSON file.

    Args:
        profiles: a list of dicts with the fields of `AgentProfile` (`depends_on` a list of
            roles); `device` is accepted and ignored with one log line (once per `source`).
        source: the file they came from, named in error messages.

    Returns:
        The validated team.

    Raises:
        ConfigError: naming `source`, the profile index and role, and the bad field.
    """
    if not isinstance(profiles, (list, tuple)):
        raise ConfigError(
            f"{source}: the top level must be a list of profile objects, "
            f"got {type_name(profiles)}")
    parsed = tuple(_profile_from_dict(obj, i, source) for i, obj in enumerate(profiles))
    ignored = [i for i, obj in enumerate(profiles) if "device" in obj]
    if ignored and source not in _DEVICE_FIELD_REPORTED:  # once per file and process
        _DEVICE_FIELD_REPORTED.add(source)
        logging.info(
            "%s: field 'device' of profiles %s ignored: the device mesh places the base "
            "models (a profile's own base is its field 'model')", source, ignored)
    return Team(profiles=parsed, source=source)


def load_team(path_or_name: str | os.PathLike) -> Team:
    """Loads and validates a team from a profile JSON file or a bare team name.

    Args:
        path_or_name: a path (anything ending in `.json` or containing a path separator), or
            a name such as "math_dual", looked up as `configs/profiles/<name>.json` in the
            project, then as `profiles/<name>.json` in the data root (see `data_root`).

    Returns:
        The validated team; `team.source` is the file it came from.

    Raises:
        ConfigError: the file is missing, not JSON, or a profile is invalid; the message
            names the file and the field.
    """
    path = resolve_profile_path(path_or_name)
    data = read_json(path, "team profile", top=(dict, list))
    return team_from_dicts(data, source=str(path))


def resolve_profile_path(path_or_name: str | os.PathLike) -> Path:
    """The profile file that `path_or_name` refers to (see `load_team`); ConfigError if none."""
    text = os.fspath(path_or_name)
    looks_like_path = text.endswith(".json") or "/" in text or os.sep in text
    if isinstance(path_or_name, os.PathLike) or looks_like_path:
        return Path(text)
    candidates = [project_root() / "configs" / "profiles" / f"{text}.json",
                  data_root() / "profiles" / f"{text}.json"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"profile {text!r}: neither {candidates[0]} nor {candidates[1]} exists "
        f"(known names: {', '.join(available_teams()) or 'none'}; "
        f"set {DATA_ENV_VAR} to the data root, or pass a path to a JSON file)")


def available_teams() -> tuple[str, ...]:
    """Names that `load_team` resolves: project teams, then data-root teams, sorted."""
    names: set[str] = set()
    for folder in (project_root() / "configs" / "profiles", data_root() / "profiles"):
        if folder.is_dir():
            names.update(p.stem for p in folder.glob("*.json"))
    return tuple(sorted(names))


def _profile_from_dict(obj: Any, index: int, source: str) -> AgentProfile:
    """One profile from its JSON object; checks presence and names of fields."""
    if not isinstance(obj, dict):
        raise ConfigError(
            f"{source}: profile {index} must be a JSON object with fields 'role', 'prompt', "
            f"'with_answer', got {type_name(obj)}")
    where = _where(source, index, obj.get("role"))
    unknown = [key for key in obj if key not in _FIELDS + _IGNORED_FIELDS]
    if unknown:
        raise ConfigError(
            f"{where}: unknown field {unknown[0]!r} (known fields: "
            f"{', '.join(_FIELDS + _IGNORED_FIELDS)})")
    for key in _REQUIRED_FIELDS:
        if key not in obj:
            raise ConfigError(f"{where}: missing field {key!r}")
    lists = {}
    for key in ("depends_on", "calls", "default_calls"):
        value = obj.get(key)
        if value is not None:
            if not isinstance(value, list):
                raise ConfigError(
                    f"{where}: field {key!r} must be a list of roles, got {type_name(value)}")
            value = tuple(value)
        lists[key] = value
    return AgentProfile(
        role=obj["role"],
        prompt=obj["prompt"],
        with_answer=obj.get("with_answer", False),
        depends_on=lists["depends_on"],
        adapter=obj.get("adapter"),
        max_new_tokens=obj.get("max_new_tokens"),
        temperature=obj.get("temperature"),
        calls=lists["calls"],
        default_calls=lists["default_calls"],
        model=obj.get("model"),
    )


def _validate_profile(profile: AgentProfile, where: str) -> None:
    """Type and range checks of one profile's fields; ConfigError prefixed by `where`."""
    if not isinstance(profile.role, str) or not profile.role:
        raise ConfigError(f"{where}: field 'role' must be a non-empty string, "
                          f"got {profile.role!r}")
    if not isinstance(profile.prompt, str):
        raise ConfigError(f"{where}: field 'prompt' must be a string, "
                          f"got {type_name(profile.prompt)}")
    if not isinstance(profile.with_answer, bool):
        raise ConfigError(f"{where}: field 'with_answer' must be true or false, "
                          f"got {profile.with_answer!r}")
    if profile.depends_on is not None and (
            not isinstance(profile.depends_on, tuple)
            or not all(isinstance(role, str) for role in profile.depends_on)):
        raise ConfigError(f"{where}: field 'depends_on' must be a list of role names, "
                          f"got {profile.depends_on!r}")
    for name in ("calls", "default_calls"):
        value = getattr(profile, name)
        if value is not None and (not isinstance(value, tuple)
                                  or not all(isinstance(role, str) for role in value)):
            raise ConfigError(f"{where}: field {name!r} must be a list of role names, "
                              f"got {value!r}")
    if profile.default_calls is not None and profile.calls is None:
        raise ConfigError(f"{where}: field 'default_calls' needs field 'calls' (only the "
                          "orchestrator calls roles)")
    if not isinstance(profile.adapter, str) or not profile.adapter:
        raise ConfigError(f"{where}: field 'adapter' must be a non-empty string, "
                          f"got {profile.adapter!r}")
    if profile.model is not None and (not isinstance(profile.model, str)
                                      or not profile.model.strip()):
        raise ConfigError(f"{where}: field 'model' must be a model name, a Hugging Face "
                          f"directory or a .gguf file, got {profile.model!r}")
    tokens = profile.max_new_tokens
    if tokens is not None and (not isinstance(tokens, int) or isinstance(tokens, bool)
                               or tokens <= 0):
        raise ConfigError(f"{where}: field 'max_new_tokens' must be a positive integer, "
                          f"got {tokens!r}")
    temp = profile.temperature
    if temp is not None and (not isinstance(temp, (int, float)) or isinstance(temp, bool)
                             or not math.isfinite(temp) or temp < 0):
        raise ConfigError(f"{where}: field 'temperature' must be a finite number >= 0, "
                          f"got {temp!r}")
