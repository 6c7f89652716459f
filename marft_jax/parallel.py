"""Device mesh, sharding rules and the multi-host runtime.

One mesh with the axes `("data", "fsdp", "tp")` (Auto axis types) serves every layout:

- environments (the env axis E of `GameState`, `Trajectory` and the update's `Batch`) are
  split over `data` × `fsdp` (`BATCH_AXES`);
- base weights are split by kind (`RULES`): column-parallel projections (q/k/v, gate/up,
  `lm_head`) put their input dimension on `fsdp` and their output on `tp`, row-parallel
  ones (o, down) the reverse, embeddings put the vocabulary on `tp`; LoRA leaves follow
  their base kernel (`lora_a` the kernel's input dimension, `lora_b` its output; the
  adapter axis is replicated); optimiser moments follow their parameters because the rules
  match key paths; the critic is a small column/row-parallel MLP; norms and counters are
  replicated. A dimension an axis does not divide stays replicated, so tiny models shard
  too;
- the KV cache puts batch rows on `BATCH_AXES` and KV heads on `tp` (`KV_CACHE_SPEC`).

The rollout and the update are the single-device functions, jitted with output shardings
over inputs placed by `Plan.place_*` (sharding propagation does the rest; the scoring
forward flattens rows env-major and env chunks / micro-batches are strided, so a split env
axis stays split inside the update). The `shard_map` mode (the data-parallel form known as
`pmap`) runs the update's gradient step per device on its own environments with replicated
adapters and one explicit all-reduce of the summed gradients; see `Plan.update_options`.

Multi-host: `initialize_distributed` joins the processes; every process runs the same
program on the global mesh, places host-identical values with `jax.device_put` (each keeps
only its own shards, so its devices hold only its environments), reads results with
`Plan.fetch`, and only process 0 writes logs and files (`is_main_process`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from marft_jax.errors import ConfigError
from marft_jax.flexmg.driver import HostReward, Rollout
from marft_jax.models.projections import PROJECTIONS

AXES = ("data", "fsdp", "tp")
BATCH_AXES = ("data", "fsdp")
MODES = ("auto", "shard_map")

# Projections by kernel layout (models/projections.py): column-parallel [hidden, out],
# row-parallel [in, hidden].
_COL = "({})'\\]".format("|".join(p for p, v in PROJECTIONS.items() if not v.row_parallel))
_ROW = "({})'\\]".format("|".join(p for p, v in PROJECTIONS.items() if v.row_parallel))
# (regex searched in the leaf's key path, spec of the leaf's dimensions); first match wins.
RULES: tuple[tuple[str, tuple], ...] = (
    (_COL + r".*'kernel'", ("fsdp", "tp")),
    (_COL + r".*'bias'", ("tp",)),
    (_ROW + r".*'kernel'", ("tp", "fsdp")),
    (_COL + r".*'lora_a'", (None, "fsdp", None)),  # [adapters, in, rank]
    (_COL + r".*'lora_b'", (None, None, "tp")),  # [adapters, rank, out]
    (_ROW + r".*'lora_a'", (None, "tp", None)),
    (_ROW + r".*'lora_b'", (None, None, "fsdp")),
    (r"'embed_tokens'", ("tp", "fsdp")),  # [vocab, hidden]
    (r"'lm_head'", ("fsdp", "tp")),  # [hidden, vocab]
    (r"critic.*\['w0'\]", (None, "fsdp", "tp")),  # [heads, hidden, width]
    (r"critic.*\['w\d+'\]", (None, "tp", None)),  # [heads, width, width']
)
KV_CACHE_SPEC = (BATCH_AXES, "tp", None, None)  # [batch, kv_heads, slots, head_dim]


def _fail(field: str, message: str):
    raise ConfigError(f"config field '{field}': {message}")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """The `mesh` config section (one device without it).

    Attributes:
        data, fsdp, tp: mesh axis sizes; -1 = the rest of the devices (one axis at most).
        mode: "auto" (sharded jit) or "shard_map" (data-parallel update gradient step with
            an explicit all-reduce; needs fsdp = tp = 1). See `Plan`.
    """

    data: int = 1
    fsdp: int = 1
    tp: int = 1
    mode: str = "auto"

    def __post_init__(self):
        check_axis_sizes(self.data, self.fsdp, self.tp)
        if self.mode not in MODES:
            _fail("mesh.mode", f"{self.mode!r} is not one of {list(MODES)}")
        if self.mode == "shard_map" and (self.fsdp != 1 or self.tp != 1):
            _fail("mesh.mode", "'shard_map' is the data-parallel mode: it needs mesh.fsdp = "
                               f"mesh.tp = 1, got fsdp={self.fsdp}, tp={self.tp}")


def check_axis_sizes(data: int, fsdp: int, tp: int) -> None:
    """Each axis size is ≥ 1 or -1 ("the rest of the devices"), and one axis at most is -1.

    Raises:
        ConfigError: naming `mesh.<axis>` (the second -1 when there are two).
    """
    sizes = dict(data=data, fsdp=fsdp, tp=tp)
    for name, size in sizes.items():
        if not isinstance(size, int) or isinstance(size, bool) or (size < 1 and size != -1):
            _fail(f"mesh.{name}", f"must be -1 (the rest of the devices) or ≥ 1, got {size!r}")
    rest = [name for name, size in sizes.items() if size == -1]
    if len(rest) > 1:
        _fail(f"mesh.{rest[1]}", f"only one of data, fsdp, tp may be -1, got {rest}")


def resolve_axis_sizes(data: int, fsdp: int, tp: int, num_devices: int) -> tuple[int, ...]:
    """Mesh axis sizes with at most one −1 ("the rest of the devices") filled in.

    Raises:
        ConfigError: naming `mesh.<axis>` when a size is invalid or the devices do not fit.
    """
    check_axis_sizes(data, fsdp, tp)
    sizes = dict(data=data, fsdp=fsdp, tp=tp)
    rest = [name for name, size in sizes.items() if size == -1]
    known = math.prod(size for size in sizes.values() if size != -1)
    if rest:
        if num_devices % known:
            _fail(f"mesh.{rest[0]}", f"{num_devices} devices do not split over the other axes "
                                     f"(product {known})")
        sizes[rest[0]] = num_devices // known
    total = math.prod(sizes.values())
    if total > num_devices:
        big = max(sizes, key=sizes.get)
        _fail(f"mesh.{big}", f"the mesh {sizes} needs {total} devices, {num_devices} present")
    return sizes["data"], sizes["fsdp"], sizes["tp"]


def check_env_split(num_envs: int, env_shards: int, field: str) -> None:
    """`num_envs` environments (config field `field`) split evenly over `env_shards`
    (mesh.data × mesh.fsdp); ConfigError naming `field` otherwise."""
    if num_envs % env_shards:
        _fail(field, f"{num_envs} environments do not split evenly over the {env_shards} "
                     "env shards of the mesh (data × fsdp)")


def make_mesh(sizes: tuple[int, int, int], devices=None) -> Mesh:
    """A `("data", "fsdp", "tp")` mesh with Auto axis types over the first devices."""
    devices = list(jax.devices() if devices is None else devices)[:math.prod(sizes)]
    return jax.make_mesh(sizes, AXES, axis_types=(AxisType.Auto,) * len(AXES),
                         devices=devices)


def fit_spec(spec: tuple, shape: tuple[int, ...], mesh: Mesh) -> P:
    """`spec` for an array of `shape`, dropping axes that do not divide their dimension.

    A spec of another rank than the array (a scalar counter matched by a rule) gives the
    replicated spec.
    """
    if len(spec) != len(shape):
        return P()
    out = []
    for dim, axes in zip(shape, spec):
        names = axes if isinstance(axes, tuple) else ((axes,) if axes else ())
        names = tuple(n for n in names if mesh.shape[n] > 1)
        size = math.prod(mesh.shape[n] for n in names)
        if not names or dim % size:
            out.append(None)
        else:
            out.append(names[0] if len(names) == 1 else names)
    return P(*out)


def rule_spec(path: str, shape: tuple[int, ...], mesh: Mesh,
              rules: tuple[tuple[str, tuple], ...] = RULES) -> P:
    """The spec of the first rule whose pattern occurs in `path`, fitted to `shape`."""
    for pattern, spec in rules:
        if re.search(pattern, path):
            return fit_spec(spec, shape, mesh)
    return P()


def env_spec(rank: int, axis: int) -> tuple:
    """Spec of a rank-`rank` array whose env axis is `axis` (split over `BATCH_AXES`)."""
    return tuple(BATCH_AXES if i == axis else None for i in range(rank))


@dataclasses.dataclass(frozen=True)
class Plan:
    """A mesh and a mode: where every array of a run lives, and how the update reduces.

    Attributes:
        mesh: the `("data", "fsdp", "tp")` mesh.
        mode: "auto" (sharded jit: sharding propagation, XLA inserts the collectives) or
            "shard_map" (the update's gradient step runs per device, replicated adapters,
            one explicit all-reduce of the gradients per optimiser step).
    """

    mesh: Mesh
    mode: str = "auto"

    @property
    def env_shards(self) -> int:
        """How many parts the env axis is split into (`data` × `fsdp`)."""
        return math.prod(self.mesh.shape[a] for a in BATCH_AXES)

    @property
    def num_devices(self) -> int:
        return self.mesh.size

    def sharding(self, spec: tuple | P = ()) -> NamedSharding:
        return NamedSharding(self.mesh, spec if isinstance(spec, P) else P(*spec))

    @property
    def replicated(self) -> NamedSharding:
        return self.sharding(P())

    def env_sharding(self, rank: int, axis: int) -> NamedSharding:
        return self.sharding(env_spec(rank, axis))

    # -- placement -------------------------------------------------------------------

    def param_shardings(self, tree):
        """`NamedSharding` per leaf of a parameter-like tree (base, LoRA, TrainState)."""
        def one(path, leaf):
            return self.sharding(rule_spec(jax.tree_util.keystr(path), leaf.shape, self.mesh))
        return jax.tree_util.tree_map_with_path(one, tree)

    def place_params(self, tree):
        """Puts every leaf where `RULES` says (works on one process or many)."""
        return jax.device_put(tree, self.param_shardings(tree))

    def struct_shardings(self, cls: type, **static: Any):
        """A `cls` of shardings built from its fields' declared env axes (`env_field`):
        each env axis split over the env shards, fields without one replicated.

        Args:
            cls: a struct class whose pytree fields declare env axes (`Trajectory`,
                `GameState`).
            **static: its static (non-pytree) fields, e.g. `group_size`.
        """
        from marft_jax.flexmg.env_axes import env_axes

        return cls(**{name: self.replicated if a.axis is None else
                      self.env_sharding(a.rank, a.axis)
                      for name, a in env_axes(cls).items()}, **static)

    def game_shardings(self, group_size: int = 1):
        """A `GameState` of shardings: per-env fields split, the problem order replicated."""
        from marft_jax.flexmg.game import GameState

        return self.struct_shardings(GameState, group_size=group_size)

    def trajectory_shardings(self, critic_view: bool = False):
        """A `Trajectory` of shardings: the env axis split (axis 2, or 1 / 0 where declared);
        `critic_view`: a heterogeneous team's, with its critic observations and without
        prompt features (one base's: the other way round)."""
        from marft_jax.flexmg.trajectory import Trajectory

        out = self.struct_shardings(Trajectory)
        if critic_view:
            return out.replace(obs_features=None)
        return out.replace(critic_obs_tokens=None, critic_obs_mask=None)

    def place_game(self, game):
        """Splits the environments of a (host-identical) game state over the mesh (a tuple
        of game states, one per base, for a heterogeneous team)."""
        if isinstance(game, tuple):
            return tuple(self.place_game(g) for g in game)
        self.check_envs(game.num_envs, "rollout.num_envs")
        return jax.device_put(game, self.game_shardings(game.group_size))

    def place_envs(self, x, axis: int = 2):
        """Puts a per-env array (env axis `axis`, e.g. `[R, A, E]` word counts)."""
        return jax.device_put(x, self.env_sharding(np.ndim(x), axis))

    def check_envs(self, num_envs: int, field: str) -> None:
        check_env_split(num_envs, self.env_shards, field)

    # -- inside jit ------------------------------------------------------------------

    def constrain_envs(self, tree, axis: int = 2):
        """`with_sharding_constraint` splitting the env axis of every leaf (inside jit)."""
        def one(x):
            spec = fit_spec(env_spec(x.ndim, axis), x.shape, self.mesh)
            return jax.lax.with_sharding_constraint(x, self.sharding(spec))
        return jax.tree.map(one, tree)

    def constrain_kv_cache(self, cache):
        """Constrains every `[batch, kv_heads, slots, head_dim]` leaf of a KV cache."""
        def one(x):
            spec = fit_spec(KV_CACHE_SPEC, x.shape, self.mesh)
            return jax.lax.with_sharding_constraint(x, self.sharding(spec))
        return jax.tree.map(one, cache)

    def per_env(self, reward_fn: Callable) -> Callable:
        """Runs a JAX `reward_fn(problem_ids [E], actions [A, E, K], lengths [A, E]) ->
        [A, E]` on each device's own environments (`shard_map`). Identity on one env shard,
        and for a `flexmg.driver.HostReward`, which the stepped rollout already grades on
        each process's own env shards (`flexmg.driver.grade_on_host`)."""
        if self.env_shards == 1 or isinstance(reward_fn, HostReward):
            return reward_fn
        b = BATCH_AXES
        return jax.shard_map(reward_fn, mesh=self.mesh, in_specs=(P(b), P(None, b), P(None, b)),
                             out_specs=P(None, b), check_vma=False)

    def jit_rollout(self, rollout: Rollout, group_size: int = 1,
                    num_bases: int = 1) -> Callable:
        """`rollout.compile()` whose outputs keep the env split (game state, trajectory);
        `group_size` is that of the game states it is called with; `num_bases` > 1: a
        heterogeneous team's rollout (a game state per base, critic observations)."""
        game = self.game_shardings(group_size)
        if num_bases > 1:
            game = (game,) * num_bases
        return rollout.compile(out_shardings=(game, self.trajectory_shardings(num_bases > 1)))

    def update_options(self, state) -> dict[str, Any]:
        """Keyword arguments of `algorithms.update.make_update` for this plan.

        - `out_shardings`: the state stays where `RULES` put it, metrics are replicated;
        - `constrain_batch` (auto mode): every minibatch and micro-batch is split over the
          env shards, so the forward/backward passes run data-parallel after the
          minibatch gather;
        - `grad_map` (shard_map mode): the minibatch gradient runs under `jax.shard_map`
          with replicated adapters, critic and base and the minibatch split over the env
          shards; each device sums its micro-batches' gradients and loss terms (the losses
          divide by the minibatch's global counts), then one `psum` adds the devices' sums.
          `check_vma=False` keeps the gradient of a replicated input local: with vma
          checking on, JAX would already sum it across devices inside every micro-step,
          and the `psum` would then count it N times.
        """
        options: dict[str, Any] = {
            "out_shardings": (self.param_shardings(state), self.replicated)}
        if self.mode == "auto":
            options["constrain_batch"] = self.constrain_envs
            return options
        b = BATCH_AXES

        def grad_map(fn: Callable) -> Callable:
            def local(params, ctx, batch, *counts):
                return jax.lax.psum(fn(params, ctx, batch, *counts), b)
            return jax.shard_map(local, mesh=self.mesh,
                                 in_specs=(P(), P(), P(None, None, b), P(), P()),
                                 out_specs=P(), check_vma=False)

        options["grad_map"] = grad_map
        return options

    def check_update(self, ppo, num_envs: int) -> None:
        """shard_map needs every micro-batch to split evenly over the env shards."""
        if self.mode != "shard_map":
            return
        per_micro = num_envs // ppo.num_minibatches // ppo.grad_accum_steps
        if per_micro % self.env_shards:
            _fail("ppo.num_minibatches", f"mesh.mode='shard_map' splits every micro-batch "
                                         f"({num_envs} envs / {ppo.num_minibatches} minibatches"
                                         f" / {ppo.grad_accum_steps} accumulation steps = "
                                         f"{per_micro}) over {self.env_shards} env shards")

    # -- host side -------------------------------------------------------------------

    @staticmethod
    def fetch(x) -> np.ndarray:
        """A global array as NumPy on every process (gathers shards of other processes)."""
        if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
            return np.asarray(x)
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    def fetch_tree(self, tree):
        return jax.tree.map(self.fetch, tree)


def is_main_process() -> bool:
    """True on the process that writes logs, metrics and files (process 0)."""
    return jax.process_index() == 0


def sync(name: str) -> None:
    """A barrier across processes (no-op in a single-process run)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def plan_for(mesh_config: MeshConfig, devices=None) -> Plan:
    """The plan of a finalized `mesh` config section.

    A multi-process run must span every device (each process owns a part of the mesh).
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = resolve_axis_sizes(mesh_config.data, mesh_config.fsdp, mesh_config.tp,
                               len(devices))
    if jax.process_count() > 1 and math.prod(sizes) != len(devices):
        _fail("mesh.data", f"a multi-process run must use all {len(devices)} devices, the "
                           f"mesh {dict(zip(AXES, sizes))} uses {math.prod(sizes)}")
    return Plan(make_mesh(sizes, devices), mesh_config.mode)


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None, process_id: int | None = None,
                           *, auto_detect: bool = False) -> bool:
    """Joins a multi-process run (`jax.distributed.initialize`) before any device is used.

    Arguments left None come from the environment: `JAX_COORDINATOR_ADDRESS` (host:port of
    process 0), `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`. With two or more processes given,
    those are used as they are (several GPU nodes, or processes on one machine over
    loopback); with `auto_detect` and nothing given, JAX detects the cluster itself (TPU pod
    slices, SLURM, Open MPI, Kubernetes). CPU processes exchange collectives over gloo.

    Returns:
        True if this process joined a multi-process run.
    """
    env = os.environ
    coordinator_address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS") or None
    if num_processes is None and env.get("JAX_NUM_PROCESSES"):
        num_processes = int(env["JAX_NUM_PROCESSES"])
    if process_id is None and env.get("JAX_PROCESS_ID"):
        process_id = int(env["JAX_PROCESS_ID"])
    explicit = num_processes is not None and num_processes > 1
    if not explicit and not auto_detect:
        return False
    if explicit and (coordinator_address is None or process_id is None):
        raise ConfigError("multi-process run: num_processes > 1 needs the coordinator "
                          "address and this process's id (flags --coordinator_address, "
                          "--process_id or JAX_COORDINATOR_ADDRESS, JAX_PROCESS_ID)")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if explicit:
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    else:
        jax.distributed.initialize()
    return jax.process_count() > 1
