"""The Flex-MG dependency function D as data: adjacency, waves, decision order and rendering.

D(i, j) = 1 means that agent i's action depends on agent j's action in the same round: agent i
acts after agent j and sees j's action. The static D comes from the team's profiles
(`depends_on`, or the reference chain where a profile leaves it out). It must be acyclic and
is layered into *waves* (topological levels): the agents of one wave act simultaneously,
waves act in sequence. An environment may switch edges off for one round (dynamic
topologies) but never on, so the static waves stay a valid schedule for every round.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from marft_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True, eq=False)
class DependencyGraph:
    """The static dependency function D of one team, with its schedule.

    Agents are indexed in profile order everywhere (the agent axis of every array);
    `order` is the separate, linearised *decision* order used for credit assignment.

    Attributes:
        roles: agent roles in profile order.
        adjacency: [agents, agents] bool, read-only; `adjacency[i, j]` is True iff agent i
            depends on agent j (row = the agent that waits, column = the agent it sees).
        source: where D came from (the profile file), named in error messages.
        dynamic: an orchestrator chooses per round which agents act (D_t); a decision may
            then be missing from a round, and credit assignment skips it.
        waves: topological levels. Wave 0 holds the agents without dependencies; wave k the
            agents whose dependencies all lie in waves < k and at least one in wave k - 1.
            Agents keep profile order inside a wave.
        wave_of: per agent (profile order), the index of its wave.
        order: the linearised decision order, the waves concatenated (agent indices).
        position: per agent, its index in `order` (the inverse permutation).
    """

    roles: tuple[str, ...]
    adjacency: np.ndarray
    source: str = "<inline>"
    dynamic: bool = False
    waves: tuple[tuple[int, ...], ...] = dataclasses.field(init=False)
    wave_of: tuple[int, ...] = dataclasses.field(init=False)
    order: tuple[int, ...] = dataclasses.field(init=False)
    position: tuple[int, ...] = dataclasses.field(init=False)

    def __post_init__(self):
        roles = tuple(self.roles)
        num = len(roles)
        adjacency = np.array(self.adjacency, copy=True)  # [agents, agents]
        if num == 0:
            raise ConfigError(f"{self.source}: a team needs at least one agent")
        if adjacency.dtype != np.bool_:
            raise ConfigError(
                f"{self.source}: dependency adjacency must be bool, got {adjacency.dtype}")
        if adjacency.shape != (num, num):
            raise ConfigError(
                f"{self.source}: dependency adjacency has shape {adjacency.shape}, expected "
                f"({num}, {num}) for roles {list(roles)}")
        self_loops = np.flatnonzero(np.diagonal(adjacency))
        if self_loops.size:
            raise ConfigError(
                f"{self.source}: field 'depends_on' of profile {int(self_loops[0])} "
                f"(role {roles[self_loops[0]]!r}) names the role itself")
        adjacency.setflags(write=False)
        wave_of = _levels(adjacency, roles, self.source)
        waves = tuple(
            tuple(i for i in range(num) if wave_of[i] == k) for k in range(max(wave_of) + 1))
        order = tuple(i for wave in waves for i in wave)
        position = [0] * num
        for pos, agent in enumerate(order):
            position[agent] = pos
        object.__setattr__(self, "roles", roles)
        object.__setattr__(self, "adjacency", adjacency)
        object.__setattr__(self, "waves", waves)
        object.__setattr__(self, "wave_of", wave_of)
        object.__setattr__(self, "order", order)
        object.__setattr__(self, "position", tuple(position))

    @classmethod
    def from_dependencies(
        cls,
        roles: Sequence[str],
        dependencies: Sequence[Sequence[int]],
        source: str = "<inline>",
        dynamic: bool = False,
    ) -> DependencyGraph:
        """Builds D from per-agent lists of the agent indices each agent depends on.

        Args:
            roles: agent roles in profile order.
            dependencies: `dependencies[i]` = indices of the agents that agent i depends on.
            source: the profile file, for error messages.
            dynamic: see the attribute.

        Returns:
            The validated graph.

        Raises:
            ConfigError: if an index is out of range, an agent depends on itself, or D has a
                cycle (the message names the file, `depends_on` and the roles on the cycle).
        """
        num = len(roles)
        if len(dependencies) != num:
            raise ConfigError(
                f"{source}: {len(dependencies)} dependency lists for {num} roles")
        adjacency = np.zeros((num, num), dtype=bool)  # [agents, agents]
        for i, deps in enumerate(dependencies):
            for j in deps:
                if not 0 <= j < num:
                    raise ConfigError(
                        f"{source}: field 'depends_on' of profile {i} (role {roles[i]!r}) "
                        f"refers to agent {j}, outside 0..{num - 1}")
                adjacency[i, j] = True
        return cls(roles=tuple(roles), adjacency=adjacency, source=source, dynamic=dynamic)

    @property
    def num_agents(self) -> int:
        """Number of agents."""
        return len(self.roles)

    @property
    def num_waves(self) -> int:
        """Number of waves (sequential generation steps per round)."""
        return len(self.waves)

    @property
    def is_chain(self) -> bool:
        """True iff D is the reference chain: agent i depends on every agent j < i."""
        chain = np.tril(np.ones((self.num_agents, self.num_agents), dtype=bool), k=-1)
        return bool(np.array_equal(self.adjacency, chain))

    def parents(self, agent: int) -> tuple[int, ...]:
        """The agents that `agent` depends on (whose actions it sees), in profile order."""
        self._check_agent(agent)
        return tuple(int(j) for j in np.flatnonzero(self.adjacency[agent]))

    def next_decision(self, agent: int) -> int:
        """Position in `order` of the decision that `agent` bootstraps from in GAE.

        The reference recursion bootstraps agent i from the value of the next decision in
        the linear order, and the last agent from the first decision of the next round.
        With waves, every agent of wave k bootstraps from the first decision of wave k + 1
        (its value is the same state plus all of wave k's actions, whichever member of wave
        k + 1 it belongs to), so agents of one wave do not bootstrap from each other.
        Agents of the last wave bootstrap from the first decision of the next round; that is
        reported as position `num_agents`, i.e. the linear order continued into round t + 1
        (position `num_agents` = position 0 of the next round). On a chain this gives
        `position[agent] + 1`, the reference recursion.

        Args:
            agent: agent index in profile order.

        Returns:
            An int in [1, num_agents]; `num_agents` means the next round's first decision.
        """
        self._check_agent(agent)
        wave = self.wave_of[agent]
        if wave + 1 < self.num_waves:
            return self.position[self.waves[wave + 1][0]]
        return self.num_agents

    @property
    def bootstrap_agent(self) -> tuple[int, ...]:
        """Per agent (profile order), the agent whose value it bootstraps from in GAE.

        Combine with `bootstrap_next_round`: the value is taken in the next round where
        that flag is set, else in the same round. See `next_decision`.
        """
        return tuple(
            self.order[self.next_decision(i) % self.num_agents] for i in range(self.num_agents))

    @property
    def bootstrap_next_round(self) -> tuple[bool, ...]:
        """Per agent (profile order), whether its GAE bootstrap lies in the next round."""
        return tuple(self.next_decision(i) == self.num_agents for i in range(self.num_agents))

    def dependency_mask(self, round_mask: np.ndarray | jax.Array | None = None):
        """D for one round: the static adjacency ANDed with an environment's round mask.

        Dynamic topologies may switch edges off for a round, never on: an edge missing from
        the static D stays off whatever the mask says, so the static waves stay valid.

        Args:
            round_mask: bool array of shape [..., agents, agents] (leading axes, e.g. rounds
                or envs, broadcast), `round_mask[..., i, j]` = whether edge i <- j may stay
                on; None gives the static adjacency. A jax.Array (also a tracer inside jit)
                gives a jax.Array back.

        Returns:
            bool array of shape [..., agents, agents] (a copy of `adjacency` for None).

        Raises:
            ValueError: if the mask is not bool or its last two axes are not [agents, agents].
        """
        if round_mask is None:
            return self.adjacency.copy()
        xp = jnp if isinstance(round_mask, jax.Array) else np
        if xp is np:
            round_mask = np.asarray(round_mask)
        shape = tuple(round_mask.shape)
        num = self.num_agents
        if len(shape) < 2 or shape[-2:] != (num, num):
            raise ValueError(
                f"{self.source}: round mask has shape {shape}, expected [..., {num}, {num}] "
                f"(agents x agents for roles {list(self.roles)})")
        if round_mask.dtype != np.bool_:
            raise ValueError(
                f"{self.source}: round mask must have dtype bool, got {round_mask.dtype}")
        return xp.logical_and(round_mask, xp.asarray(self.adjacency))

    def to_text(self) -> str:
        """Renders D as text: one line per agent, in decision order, with its wave.

        `aggregator <- solver_a, solver_b` reads "aggregator sees solver_a's and solver_b's
        actions".
        """
        agents = f"{self.num_agents} agent" + ("s" if self.num_agents > 1 else "")
        waves = f"{self.num_waves} wave" + ("s" if self.num_waves > 1 else "")
        lines = [f"D of {self.source}: {agents} in {waves}" + (" (chain)" if self.is_chain else "")]
        width = max(len(role) for role in self.roles)
        for agent in self.order:
            deps = ", ".join(self.roles[j] for j in self.parents(agent))
            line = f"  wave {self.wave_of[agent]}: {self.roles[agent]:<{width}}"
            lines.append((line + f"  <- {deps}") if deps else line.rstrip())
        return "\n".join(lines)

    def to_dot(self) -> str:
        """Renders D in Graphviz DOT: an edge j -> i means agent i sees agent j's action.

        Agents of one wave share a rank, so `dot -Tsvg` draws the waves as columns.
        """
        def name(agent: int) -> str:
            return json.dumps(self.roles[agent])

        lines = ["digraph D {", "  rankdir=LR;", f"  label={json.dumps('D: ' + self.source)};"]
        for k, wave in enumerate(self.waves):
            members = " ".join(f"{name(i)};" for i in wave)
            lines.append(f"  subgraph wave_{k} {{ rank=same; {members} }}")
        for i in self.order:
            for j in self.parents(i):
                lines.append(f"  {name(j)} -> {name(i)};")
        lines.append("}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_text()

    def _check_agent(self, agent: int) -> None:
        if not 0 <= agent < self.num_agents:
            raise IndexError(f"agent {agent} out of range 0..{self.num_agents - 1}")


def _levels(adjacency: np.ndarray, roles: tuple[str, ...], source: str) -> tuple[int, ...]:
    """Topological level of every agent; ConfigError naming the roles on a cycle.

    Args:
        adjacency: [agents, agents] bool, `adjacency[i, j]` iff agent i depends on agent j.
        roles: agent roles, for the error message.
        source: the profile file, for the error message.

    Returns:
        Per agent, 0 if it has no dependencies, else 1 + the largest level among them.
    """
    num = len(roles)
    level = [-1] * num
    remaining = list(range(num))
    wave = 0
    while remaining:
        ready = [i for i in remaining if not any(adjacency[i, j] for j in remaining)]
        if not ready:
            cycle = _find_cycle(adjacency, remaining)
            path = " -> ".join(roles[i] for i in cycle)
            raise ConfigError(
                f"{source}: field 'depends_on' forms a cycle: {path} (read '->' as "
                f"'depends on'); the dependency function must be acyclic")
        for i in ready:
            level[i] = wave
        remaining = [i for i in remaining if level[i] < 0]
        wave += 1
    return tuple(level)


def _find_cycle(adjacency: np.ndarray, remaining: list[int]) -> list[int]:
    """A cycle among `remaining`, where every agent depends on another remaining agent.

    Returns:
        Agent indices [a, b, ..., a]: a depends on b, ..., back to a.
    """
    seen: dict[int, int] = {}
    path: list[int] = []
    agent = remaining[0]
    while agent not in seen:
        seen[agent] = len(path)
        path.append(agent)
        agent = next(j for j in remaining if adjacency[agent, j])
    return path[seen[agent]:] + [agent]
