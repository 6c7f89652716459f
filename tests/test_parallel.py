"""Scale-out: sharded training equals one device; two processes equal one process.

The training runs execute in subprocesses (`tests/parallel_worker.py`) on forced host CPU
devices, since this pytest process has already started JAX with one device. One module
fixture launches them all at once (compile-bound single-threaded workers overlap on the
cores): two 4-device workers for the meshes, and two 2-device processes over loopback
forming one 4-device run. Every run trains `configs/tiny_cpu.py` for 2 iterations and
restores its last checkpoint; the restored train and game states are compared.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from jax.sharding import AbstractMesh, PartitionSpec as P

from marft_jax import parallel
from marft_jax.algorithms.config import PPOConfig
from marft_jax.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "parallel_worker.py"
# NAME:DATA,FSDP,TP,MODE,ITERATIONS
# An orchestrated team (dynamic topology: the router's per-env calls follow the env split).
ROUTE = ":team.profiles='token_route'|task.kind='route'"
FIRST = ["one:1,1,1,auto,2", "data2_fsdp2:2,2,1,auto,2", "data2_tp2:2,1,2,auto,2"]
# The orchestrated team split 4 ways in shard_map mode with ppo.shared_prefix: one run
# covers the three against the whole-row jit on one device (auto mode's data split:
# data2_fsdp2 and the two processes).
SECOND = ["route_one:1,1,1,auto,2" + ROUTE,
          "route_prefix_shard_map4:4,1,1,shard_map,2" + ROUTE + "|ppo.shared_prefix=True"]
TWO_PROCESSES = ["two_processes:2,2,1,auto,2"]  # data across the processes, fsdp within
TOL = 1e-5


class _Job:
    """A worker subprocess whose output goes to a log file."""

    def __init__(self, out: Path, devices: int, runs: list[str], tag: str, *extra: str):
        self.log = out / f"{tag}.log"
        args = [sys.executable, str(WORKER), f"--devices={devices}", f"--out={out}",
                *(f"--run={r}" for r in runs), *extra]
        env = dict(os.environ, JAX_PLATFORMS="cpu")
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log,
                                         stderr=subprocess.STDOUT)

    def wait(self) -> None:
        try:
            code = self.proc.wait(timeout=600)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = "timeout"
        if code != 0:
            tail = self.log.read_text()[-4000:]
            raise AssertionError(f"{self.log.name}: exit {code}\n{tail}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    out = tmp_path_factory.mktemp("parallel")
    coordinator = f"--coordinator=localhost:{_free_port()}"
    started = {
        "first": _Job(out, 4, FIRST, "first"),
        "second": _Job(out, 4, SECOND, "second"),
        "process0": _Job(out, 2, TWO_PROCESSES, "process0", coordinator, "--num_processes=2",
                         "--process_id=0"),
        "process1": _Job(out, 2, TWO_PROCESSES, "process1", coordinator, "--num_processes=2",
                         "--process_id=1"),
    }
    yield out, started
    for job in started.values():
        if job.proc.poll() is None:
            job.proc.kill()


def _result(jobs, name: str):
    out, started = jobs
    owners = {r.split(":")[0]: tags for runs, tags in (
        (FIRST, ("first",)), (SECOND, ("second",)), (TWO_PROCESSES, ("process0", "process1")))
        for r in runs}
    for tag in owners[name]:
        started[tag].wait()
    return dict(np.load(out / f"{name}.npz")), json.loads((out / f"{name}.json").read_text())


def _assert_same_run(jobs, name: str, reference: str) -> None:
    arrays, info = _result(jobs, name)
    ref_arrays, ref_info = _result(jobs, reference)
    assert sorted(arrays) == sorted(ref_arrays)
    for key, ref in ref_arrays.items():
        if ref.dtype.kind == "f":
            np.testing.assert_allclose(arrays[key], ref, atol=TOL, rtol=0, err_msg=key)
        else:
            np.testing.assert_array_equal(arrays[key], ref, err_msg=key)
    assert [r["step"] for r in info["metrics"]] == [r["step"] for r in ref_info["metrics"]]
    for record, ref in zip(info["metrics"], ref_info["metrics"]):
        assert sorted(record) == sorted(ref)
        for key, value in ref.items():
            if value is None or record[key] is None:
                assert record[key] == value, key
            else:
                assert abs(record[key] - value) <= TOL, (key, record[key], value)


@pytest.mark.parametrize("name", ["data2_fsdp2", "data2_tp2"])
@pytest.mark.slow
def test_sharded_training_matches_one_device(jobs, name):
    _assert_same_run(jobs, name, "one")
    assert _result(jobs, "one")[1]["mesh"] == {"data": 1, "fsdp": 1, "tp": 1}


@pytest.mark.slow
def test_orchestrated_team_in_shard_map_mode_with_shared_prefix_matches_one_device(jobs):
    _assert_same_run(jobs, "route_prefix_shard_map4", "route_one")


@pytest.mark.slow
def test_layouts_really_split_weights_and_environments(jobs):
    q_b = "['train'].lora['layers'][0]['self_attn']['q_proj']['lora_b'].value"
    q_a = "['train'].lora['layers'][0]['self_attn']['q_proj']['lora_a'].value"
    mu_q_b = "['train'].actor_opt[1][0].mu['layers'][0]['self_attn']['q_proj']['lora_b'].value"
    specs = {name: _result(jobs, name)[1]["specs"] for name in ("data2_fsdp2", "data2_tp2",
                                                                 "route_prefix_shard_map4")}
    assert specs["data2_tp2"][q_b] == specs["data2_tp2"][mu_q_b] == str(P(None, None, "tp"))
    assert specs["data2_tp2"][q_a] == str(P(None, None, None))
    assert specs["data2_fsdp2"][q_a] == str(P(None, "fsdp", None))
    assert specs["data2_tp2"]["['train'].critic['w0']"] == str(P(None, None, "tp"))
    four = specs["route_prefix_shard_map4"]
    assert four["['game'].tokens"] == str(P(("data", "fsdp"), None))
    assert four["['game'].order"] == str(P())


@pytest.mark.slow
def test_two_processes_match_one_process(jobs):
    _assert_same_run(jobs, "two_processes", "data2_fsdp2")  # the same mesh in one process
    _assert_same_run(jobs, "two_processes", "one")
    out, _ = jobs
    info = _result(jobs, "two_processes")[1]
    assert info["processes"] == 2 and info["mesh"] == {"data": 2, "fsdp": 2, "tp": 1}
    run_dir = out / "two_processes"
    assert [r["step"] for r in info["metrics"]] == [1, 2]  # process 0 wrote each step once
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["1", "2"]
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 1


# -- in-process checks (no devices needed) ------------------------------------------


def test_rules_cover_every_weight_kind():
    mesh = AbstractMesh((2, 2, 2), parallel.AXES)
    spec = lambda path, shape: parallel.rule_spec(path, shape, mesh)
    layer = "['layers'][3]"
    assert spec(f"{layer}['self_attn']['q_proj']['kernel'].value", (64, 64)) == P("fsdp", "tp")
    assert spec(f"{layer}['self_attn']['k_proj']['bias'].value", (32,)) == P("tp")
    assert spec(f"{layer}['self_attn']['o_proj']['kernel'].value", (64, 64)) == P("tp", "fsdp")
    assert spec(f"{layer}['mlp']['up_proj']['kernel'].value", (64, 128)) == P("fsdp", "tp")
    assert spec(f"{layer}['mlp']['down_proj']['kernel'].value", (128, 64)) == P("tp", "fsdp")
    assert spec(f"{layer}['mlp']['gate_proj']['lora_a'].value", (3, 64, 8)) \
        == P(None, "fsdp", None)
    assert spec(f"{layer}['mlp']['gate_proj']['lora_b'].value", (3, 8, 128)) \
        == P(None, None, "tp")
    assert spec(f".actor_opt[1][0].nu{layer}['mlp']['down_proj']['lora_a'].value",
                (3, 128, 8)) == P(None, "tp", None)
    assert spec(f"{layer}['self_attn']['o_proj']['lora_b'].value", (3, 8, 64)) \
        == P(None, None, "fsdp")
    assert spec("['embed_tokens'].value", (256, 64)) == P("tp", "fsdp")
    assert spec("['lm_head'].value", (64, 256)) == P("fsdp", "tp")
    assert spec(f"{layer}['input_layernorm']['scale'].value", (64,)) == P()
    assert spec(".critic['w0']", (1, 64, 32)) == P(None, "fsdp", "tp")
    assert spec(".critic_opt[1][0].mu['w2']", (1, 16, 1)) == P(None, "tp", None)
    assert spec(".actor_opt[1][0].count", (3,)) == P()
    # An axis that does not divide its dimension is dropped (odd vocabularies shard too).
    assert spec("['embed_tokens'].value", (255, 64)) == P(None, "fsdp")
    cache = parallel.fit_spec(parallel.KV_CACHE_SPEC, (8, 2, 40, 16), mesh)
    assert cache == P(("data", "fsdp"), "tp", None, None)


def test_every_rollout_field_declares_its_env_axis():
    """`Plan` splits `Trajectory` and `GameState` by their fields' declared env axes: a field
    added without one fails here (and in `env_axes`), not silently in a multi-device run."""
    import dataclasses

    import jax
    from flax import struct
    from jax.sharding import Mesh

    from marft_jax.flexmg.env_axes import env_axes, env_field
    from marft_jax.flexmg.game import GameState
    from marft_jax.flexmg.trajectory import Trajectory

    for cls in (Trajectory, GameState):
        arrays = [f.name for f in dataclasses.fields(cls) if f.metadata.get("pytree_node", True)]
        axes = env_axes(cls)
        assert list(axes) == arrays
        assert all(a.axis is None or 0 <= a.axis < a.rank for a in axes.values()), axes

    @struct.dataclass
    class Undeclared:
        declared: jax.Array = env_field(0, 1)
        added: jax.Array = struct.field()

    with pytest.raises(TypeError, match="Undeclared.added declares no env axis"):
        env_axes(Undeclared)
    plan = parallel.Plan(Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), parallel.AXES))
    traj, game = plan.trajectory_shardings(), plan.game_shardings(group_size=2)
    batch = parallel.BATCH_AXES
    assert traj.obs_tokens.spec == P(None, None, batch, None)
    assert traj.dones.spec == P(None, batch) and traj.next_obs_mask.spec == P(batch, None)
    assert traj.adapter_ids.spec == P() and game.order.spec == P() and game.cursor.spec == P()
    assert game.tokens.spec == P(batch, None) and game.group_size == 2


def test_axis_sizes_fill_the_rest_and_name_bad_fields():
    assert parallel.resolve_axis_sizes(-1, 1, 1, 8) == (8, 1, 1)
    assert parallel.resolve_axis_sizes(2, -1, 2, 8) == (2, 2, 2)
    assert parallel.resolve_axis_sizes(1, 1, 1, 8) == (1, 1, 1)
    for sizes, field in [((8, 1, 1), "mesh.data"), ((-1, 1, 3), "mesh.data"),
                         ((-1, -1, 1), "mesh.fsdp"), ((1, 1, 0), "mesh.tp")]:
        with pytest.raises(ConfigError, match=rf"config field '{field}'"):
            parallel.resolve_axis_sizes(*sizes, 4)


@pytest.mark.parametrize("changes, field", [
    (dict(mode="pmap"), "mesh.mode"),
    (dict(mode="shard_map", tp=2), "mesh.mode"),
    (dict(data=3), "rollout.num_envs"),
    (dict(tp=0), "mesh.tp"),
    (dict(data=-1, fsdp=-1), "mesh.fsdp"),  # the second -1
])
def test_bad_mesh_config_names_the_field(changes, field):
    from configs.tiny_cpu import get_config
    from marft_jax.training.config import finalize

    config = get_config()
    config.mesh.update(**changes)
    with pytest.raises(ConfigError, match=rf"config field '{field}'"):
        finalize(config)


def test_shard_map_needs_micro_batches_that_split_over_the_devices():
    plan = parallel.Plan(AbstractMesh((4, 1, 1), parallel.AXES), "shard_map")
    plan.check_update(PPOConfig(num_minibatches=2), 16)  # 8 envs per micro-batch
    with pytest.raises(ConfigError, match=r"config field 'ppo\.num_minibatches'"):
        plan.check_update(PPOConfig(num_minibatches=2, grad_accum_steps=2), 8)


def test_single_process_without_settings_does_not_initialize(monkeypatch):
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(name, raising=False)
    assert parallel.initialize_distributed() is False
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    with pytest.raises(ConfigError, match="coordinator"):
        parallel.initialize_distributed()


@pytest.mark.slow
def test_train_entry_refuses_a_mesh_larger_than_the_devices(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "train.py"),
                           "--config=configs/tiny_cpu.py", "--config.mesh.data=8",
                           f"--run_dir={tmp_path / 'run'}"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "'mesh.data'" in errors[0], proc.stderr[-2000:]
    assert not (tmp_path / "run").exists()
