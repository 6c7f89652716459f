"""Heterogeneous teams: agents on different base models (the profile field `model`).

Agents that name the same base share its weights and one stacked LoRA whose adapter axis
is the *team's* adapter axis (`team.adapter_names`): a base's stack holds a slot for every
adapter of the team, and only the slots of its own agents are ever used or stepped (the
others get zero gradients, so Adam leaves them unchanged). With every stack on the same
axis, the per-adapter optimiser, guards and metrics work on the tuple of stacks as they do
on one stack. Each base has its own tokenizer and chat template: observations are built in
each base's tokens and text crosses between bases as text (`flexmg/hetero.py`).

A team whose agents all sit on one base (the usual case) never reaches this module's
loaders: `training.setup` builds it exactly as before.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from marft_jax.errors import ConfigError
from marft_jax.flexmg.names import where


@dataclasses.dataclass(frozen=True)
class BaseGroups:
    """Which agent sits on which base (static).

    Attributes:
        names: the bases, as the profiles (or `model.name`) name them, first-appearance order.
        agent_base: `[A]` the base of each agent.
        critic_base: the base whose trunk the critic reads (`team.critic_base`).
        sources: where each base was loaded from (for checkpoints and PEFT export).
    """

    names: tuple[str, ...]
    agent_base: tuple[int, ...]
    critic_base: int = 0
    sources: tuple[str, ...] = ()

    @property
    def num_bases(self) -> int:
        return len(self.names)

    def agents(self, b: int) -> tuple[int, ...]:
        """Profile indices of the agents on base `b`."""
        return tuple(i for i, base in enumerate(self.agent_base) if base == b)


def groups_for(exp) -> BaseGroups | None:
    """The team's `BaseGroups`, or None for a team on one base."""
    team = exp.team
    names = team.base_models(exp.model_name)
    if len(names) == 1:
        return None
    return BaseGroups(names=names, agent_base=team.base_index(exp.model_name),
                      critic_base=critic_base_index(exp, names))


def critic_base_index(exp, names: tuple[str, ...]) -> int:
    """`team.critic_base` ("" = the first agent's base) as an index into `names`."""
    wanted = exp.critic_base
    if not wanted:
        return 0
    if wanted not in names:
        raise ConfigError(f"config field 'team.critic_base': {wanted!r} is not a base of the "
                          f"team (bases: {', '.join(names)})")
    return names.index(wanted)


def check_heterogeneous(exp) -> None:
    """What a heterogeneous team cannot do (yet), refused before any model is loaded.

    Raises:
        ConfigError: naming the field: a JAX-native task (one vocabulary), an orchestrated
            team, a critic other than an action-level one on the "base" trunk, a device
            mesh, `ppo.row_trim`, `ppo.shared_prefix`, `rollout.shared_prefix`, or an
            unknown `team.critic_base`.
    """
    from marft_jax.envs.registry import get_task

    team = exp.team
    names = team.base_models(exp.model_name)
    if len(names) == 1:
        if exp.critic_base and exp.critic_base != names[0]:
            raise ConfigError(f"config field 'team.critic_base': {exp.critic_base!r} is not "
                              f"the team's base ({names[0]!r})")
        return
    critic_base_index(exp, names)
    first = next(i for i, p in enumerate(team.profiles) if p.model is not None)
    at = f"{where(team.source, first, team.profiles[first].role)}: field 'model'"
    if get_task(exp.task.kind).jax_native:
        raise ConfigError(f"{at}: task.kind={exp.task.kind!r} is a token task with one "
                          "vocabulary; agents on different bases need a text task")
    if team.orchestrator is not None:
        raise ConfigError(f"{at}: an orchestrated team runs on one base")
    ppo = exp.ppo
    if ppo.spec.uses_critic and ppo.spec.level != "action":
        raise ConfigError(f"config field 'ppo.algorithm': {ppo.algorithm!r} has token-level "
                          "values; a heterogeneous team's critic is action-level (the "
                          "critic base tokenises actions differently)")
    if ppo.spec.uses_critic and ppo.critic_trunk != "base":
        raise ConfigError("config field 'ppo.critic_trunk': a heterogeneous team's critic "
                          "reads one base (team.critic_base), so it needs 'base', got "
                          f"{ppo.critic_trunk!r}")
    if max(exp.mesh.data, 1) * max(exp.mesh.fsdp, 1) * max(exp.mesh.tp, 1) != 1:
        raise ConfigError("config field 'mesh': a heterogeneous team runs on one device")
    if ppo.row_trim:
        raise ConfigError("config field 'ppo.row_trim': not supported for a heterogeneous "
                          "team (each base scores its own rows)")
    if ppo.shared_prefix:
        raise ConfigError("config field 'ppo.shared_prefix': not supported for a "
                          "heterogeneous team (each base scores its own rows)")
    if exp.rollout.shared_prefix:
        raise ConfigError("config field 'rollout.shared_prefix': not supported for a "
                          "heterogeneous team (its rollout has one sampler call per base)")


@dataclasses.dataclass(frozen=True)
class LoadedBase:
    """One base of a team: its model, adapters and tokenizer."""

    config: Any  # ModelConfig
    graphdef: Any
    params: Any
    lora: Any
    tokenizer: Any
    source: str


def load_base(exp, name: str, index: int) -> LoadedBase:
    """Loads base `name` (a profile's `model`) with the team's adapter layout.

    Raises:
        ConfigError: one line naming the first profile that names `name` and the field
            'model': unknown name, unreadable directory or file, a model that does not
            load, or a tokenizer whose ids do not fit the model's vocabulary.
    """
    from marft_jax.models.weights import load_model
    from marft_jax.tokenizer import Tokenizer

    team = exp.team
    agent = team.base_index(exp.model_name).index(index)
    at = f"{where(team.source, agent, team.profiles[agent].role)}: field 'model' ({name!r})"
    if name == "tiny":
        raise ConfigError(f"{at}: the random tiny model is the run's model.name only; "
                          "name a registered model, an HF directory or a .gguf file")
    try:
        m = load_model(name, dtype=exp.dtype, lora=exp.lora, seed=exp.seed + index)
        tokenizer = Tokenizer.from_model_source(m.source)
    except ConfigError as e:
        raise ConfigError(f"{at}: {e}") from None
    except Exception as e:  # noqa: BLE001 - any failure to load is a bad profile
        raise ConfigError(f"{at}: does not load ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if len(tokenizer.hf_tokenizer) > m.config.vocab_size:
        raise ConfigError(f"{at}: its tokenizer has {len(tokenizer.hf_tokenizer)} ids, more "
                          f"than the model's vocabulary of {m.config.vocab_size}")
    return LoadedBase(m.config, m.graphdef, m.base, m.lora, tokenizer, str(m.source.path))
