"""Orchestrated teams: a dynamic dependency function D_t chosen by an orchestrator agent.

The orchestrator (the profile with `calls`) acts first and alone in every round. A
*router* reads its action and says which of the roles it may call act this round, and
whether the episode is done:

    router(actions [A, E, K], lengths [A, E]) -> (calls [E, A] bool, done [E] bool)

`active_agents` turns that into the round's decision mask: an agent that is not called
produces no action (empty response), no decision (it drops out of GAE, the losses and
their counts: `algorithms.advantages` skips it in the credit order) and is seen by no one;
on `done` nobody but the orchestrator acts and the episode ends after the round.

Two routers: `token_choice_router` (JAX-native: the orchestrator's first token is the
choice, for token tasks whose whole rollout is one jit) and `host_router` (text: the
orchestrator's response is decoded and parsed on the host between waves, through
`jax.pure_callback`; `<call>role</call>` calls a role, `<done/>` ends the episode).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from marft_jax.errors import ConfigError

if TYPE_CHECKING:
    from marft_jax.flexmg.graph import DependencyGraph
    from marft_jax.flexmg.profiles import AgentProfile, Team

Array = jax.Array
Router = Callable[[Array, Array], tuple[Array, Array]]

CALL_TAG = re.compile(r"<call>\s*([^<>]*?)\s*</call>")
DONE_TAG = re.compile(r"<done\s*/?>")


def validate_orchestration(profiles: tuple[AgentProfile, ...], graph: DependencyGraph,
                           source: str) -> None:
    """Checks an orchestrated team; ConfigError naming the file, profile and field.

    One orchestrator at most; it acts first and alone (it depends on no role, every other
    agent depends on it, directly or not); `calls` names other known roles, each once, and
    `default_calls` a subset of them.
    """
    from marft_jax.flexmg.names import where as _where

    orchestrators = [i for i, p in enumerate(profiles) if p.calls is not None]
    if not orchestrators:
        return
    o = orchestrators[0]
    if len(orchestrators) > 1:
        i = orchestrators[1]
        raise ConfigError(f"{_where(source, i, profiles[i].role)}: field 'calls': a team has "
                          f"one orchestrator, and profile {o} ({profiles[o].role!r}) is one")
    orch = profiles[o]
    where = _where(source, o, orch.role)
    roles = [p.role for p in profiles]
    if not orch.calls:
        raise ConfigError(f"{where}: field 'calls' must name at least one role")
    for name in ("calls", "default_calls"):
        listed = getattr(orch, name) or ()
        for k, role in enumerate(listed):
            if role == orch.role:
                raise ConfigError(f"{where}: field {name!r} names the orchestrator itself")
            if role not in roles:
                raise ConfigError(f"{where}: field {name!r} names unknown role {role!r} "
                                  f"(roles: {', '.join(roles)})")
            if role in listed[:k]:
                raise ConfigError(f"{where}: field {name!r} names {role!r} twice")
            if name == "default_calls" and role not in orch.calls:
                raise ConfigError(f"{where}: field 'default_calls' names {role!r}, which "
                                  "is not in field 'calls'")
    if graph.parents(o):
        raise ConfigError(f"{where}: field 'depends_on': the orchestrator acts first in "
                          "every round, so it depends on no role (set \"depends_on\": [])")
    for i in graph.waves[0]:
        if i != o:
            raise ConfigError(
                f"{_where(source, i, profiles[i].role)}: field 'depends_on' must name the "
                f"orchestrator {orch.role!r} (or a role that depends on it): every agent "
                "acts after the orchestrator")


def active_agents(team: Team, calls: Array, done: Array) -> Array:
    """`[E, A]` bool: who acts this round, from the router's `calls [E, A]` and `done [E]`.

    The orchestrator always acts; a callable role acts when called (or, when the call
    names none of them, when it is in `default_calls`); any other role acts every round;
    on `done` only the orchestrator acts.
    """
    callable_ = jnp.asarray(team.callable_mask)  # [A]
    default = jnp.asarray(team.default_call_mask)  # [A]
    named = jnp.any(calls & callable_, axis=1, keepdims=True)  # [E, 1]
    called = jnp.where(named, calls, default[None, :]) & callable_
    active = jnp.where(callable_, called, True) & ~done[:, None]
    return active.at[:, team.orchestrator].set(True)


def token_choice_router(team: Team, first_symbol: int) -> Router:
    """JAX-native router: the orchestrator's first token `t` chooses.

    With C callable roles (in `calls` order), `c = (t − first_symbol) mod (C + 1)`:
    c < C calls the c-th role alone, c = C says done. Every token is a choice, so an
    untrained orchestrator routes at random (chance 1 / (C + 1) each).
    """
    o = team.orchestrator
    orch = team.profiles[o]
    targets = np.asarray([team.roles.index(role) for role in orch.calls], np.int32)  # [C]
    num = len(targets)

    def router(actions: Array, lengths: Array) -> tuple[Array, Array]:
        choice = jnp.mod(actions[o, :, 0] - first_symbol, num + 1)  # [E]
        choice = jnp.where(lengths[o] > 0, choice, num)  # an empty action: done
        agent = jnp.asarray(targets)[jnp.minimum(choice, num - 1)]  # [E]
        calls = (jnp.arange(team.num_agents)[None, :] == agent[:, None]) & \
            (choice < num)[:, None]  # [E, A]
        return calls, choice == num

    return router


def parse_orchestration(text: str, callable_roles: tuple[str, ...]) -> tuple[set[str], bool]:
    """The roles an orchestrator's response calls, and whether it says done.

    `<call>role</call>` calls `role` if it is one of `callable_roles` (others are ignored:
    the profile says whom it may call); `<done/>` (or `<done>`) ends the episode.
    """
    called = {m.group(1) for m in CALL_TAG.finditer(text)} & set(callable_roles)
    return called, DONE_TAG.search(text) is not None


def host_router(team: Team, tokenizer: Any) -> Router:
    """Router for text teams: decodes the orchestrator's responses and parses them on the
    host (`parse_orchestration`), through `jax.pure_callback` between waves."""
    o = team.orchestrator
    roles = team.roles
    allowed = tuple(team.profiles[o].calls)
    num_agents = team.num_agents

    def parse(tokens: np.ndarray, lengths: np.ndarray):
        envs = tokens.shape[0]
        calls = np.zeros((envs, num_agents), bool)
        done = np.zeros((envs,), bool)
        for e in range(envs):
            text = tokenizer.decode(tokens[e, :int(lengths[e])].tolist())
            called, done[e] = parse_orchestration(text, allowed)
            for role in called:
                calls[e, roles.index(role)] = True
        return calls, done

    def router(actions: Array, lengths: Array) -> tuple[Array, Array]:
        e = actions.shape[1]
        shapes = (jax.ShapeDtypeStruct((e, num_agents), jnp.bool_),
                  jax.ShapeDtypeStruct((e,), jnp.bool_))
        return jax.pure_callback(
            lambda t, n: parse(np.asarray(t), np.asarray(n)), shapes, actions[o], lengths[o],
            vmap_method="sequential")

    return router
