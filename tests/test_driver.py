"""The rollout's two ways to run (flexmg.driver): one program, or jitted parts stepped on the
host with grading between them; shard-wise grading; no host callback in the parts."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from marft_jax.envs.tokens import token_layout, token_problems, token_reward_fn
from marft_jax.flexmg.driver import HostReward, grade_on_host
from marft_jax.flexmg.game import init_game
from marft_jax.flexmg.layout import state_capacity
from marft_jax.flexmg.rollout import RolloutConfig, make_rollout
from tests.test_token_task import CFG, K, TEAM, random_policy

ROOT = Path(__file__).resolve().parents[1]


def _token_rollout(reward_fn, rounds=3, horizon=2, envs=4):
    """The token task's rollout with `reward_fn`, its first game and key."""
    layout, table = token_layout(CFG), token_problems(CFG)
    config = RolloutConfig(num_rounds=rounds, horizon=horizon, obs_tokens=24, action_tokens=K)
    rollout = make_rollout(TEAM, layout, table, random_policy, reward_fn, config)
    size = state_capacity(layout, 1, K, 2, horizon)
    game = init_game(layout, table, envs, size, jax.random.key(0))
    return rollout, game, jax.random.key(1)


def _as_host(reward_fn) -> HostReward:
    """A JAX reward graded in NumPy (what a text task's grader is)."""
    return HostReward(lambda p, a, n: np.asarray(reward_fn(jnp.asarray(p), jnp.asarray(a),
                                                           jnp.asarray(n))), CFG.num_agents)


def test_stepped_rollout_equals_the_one_program_rollout():
    """The same reward graded on the host between jitted parts gives the same games and
    trajectory as the one-program scan: rounds, resets (horizon 2 of 3 rounds), keys."""
    reward = token_reward_fn(CFG)
    whole, game, key = _token_rollout(reward)
    stepped, _, _ = _token_rollout(_as_host(reward))
    assert not whole.host_graded and stepped.host_graded
    ref_game, ref_traj = jax.jit(whole)(None, game, key)
    got_game, got_traj = stepped.compile()(None, game, key)
    flat = lambda tree: jax.tree_util.tree_flatten_with_path(tree)[0]
    for (path, want), (_, got) in zip(flat((ref_game, ref_traj)), flat((got_game, got_traj))):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want),
                                      err_msg=jax.tree_util.keystr(path))
    assert float(jnp.sum(ref_traj.dones)) > 0  # the envs were reset within the call


def test_host_graded_rollout_cannot_be_traced_whole():
    stepped, game, key = _token_rollout(_as_host(token_reward_fn(CFG)))
    with pytest.raises(TypeError, match="Rollout.compile"):
        jax.jit(stepped)(None, game, key)


def test_stepped_parts_hold_no_host_callback():
    """JAX never writes a program with a host callback to its persistent compilation cache;
    the host-graded rollout's programs hold none (the detector sees a real callback)."""
    rollout, game, key = _token_rollout(_as_host(token_reward_fn(CFG)), rounds=1)
    play, graded = rollout.act(None, game, key)
    correct = grade_on_host(rollout.reward_fn, *graded)
    next_game, record = rollout.settle(game, play, correct)
    texts = [jax.jit(rollout.act).lower(None, game, key).as_text(),
             jax.jit(rollout.settle).lower(game, play, correct).as_text(),
             jax.jit(rollout.finish).lower(next_game, (record,)).as_text()]
    for text in texts:
        assert "callback" not in text.lower()
    with_callback = jax.jit(lambda x: jax.pure_callback(
        np.negative, jax.ShapeDtypeStruct(x.shape, x.dtype), x)).lower(jnp.ones(2)).as_text()
    assert "callback" in with_callback.lower()


_SHARDS = textwrap.dedent("""
    import json, os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from marft_jax.flexmg.driver import HostReward, grade_shards
    calls = []
    def grade(p, a, n):
        calls.append(len(p))
        return (a.sum(-1) + n * 10 + p[None, :] * 100).astype(np.float32)
    reward = HostReward(grade, 2)
    mesh = jax.make_mesh((2, 2), ("data", "tp"))
    ids = np.arange(6, dtype=np.int32)
    acts = np.arange(2 * 6 * 3, dtype=np.int32).reshape(2, 6, 3)
    lens = np.arange(12, dtype=np.int32).reshape(2, 6) % 4
    put = lambda x, spec: jax.device_put(x, NamedSharding(mesh, spec))
    got = grade_shards(reward, put(ids, P("data")), put(acts, P(None, "data")),
                       put(lens, P(None, "data")))
    # actions and lengths whole on every device: each env slice still reads its own rows
    mixed = grade_shards(reward, put(ids, P("data")), put(acts, P()), put(lens, P()))
    want = grade(ids, acts, lens)
    print(json.dumps({"equal": bool(np.array_equal(np.asarray(got), want)),
                      "mixed": bool(np.array_equal(np.asarray(mixed), want)),
                      "split": got.sharding.spec == P(None, "data"),
                      "calls": calls[:-1]}))
""")


def test_grade_shards_grades_each_env_slice_once_and_keeps_the_split():
    """On 4 devices (envs over 2, replicated over 2): each env half is graded once, the
    result equals grading everything and is split like the problem ids, also when the
    actions and lengths are not split (every device holds all of them)."""
    out = subprocess.run([sys.executable, "-c", _SHARDS], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, env={"JAX_PLATFORMS": "cpu",
                                                      "PATH": "/usr/bin:/bin",
                                                      "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"equal": True, "mixed": True, "split": True, "calls": [3, 3, 3, 3]}


_TWO_PROCESSES = textwrap.dedent("""
    import json, os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    from marft_jax import parallel
    parallel.initialize_distributed(sys.argv[1], 2, int(sys.argv[2]))
    import jax, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from marft_jax.flexmg.driver import HostReward, grade_on_host
    seen = []
    def grade(p, a, n):
        seen.extend(int(x) for x in p)
        return (a.sum(-1) + n * 10 + p[None, :] * 100).astype(np.float32)
    mesh = jax.make_mesh((4,), ("data",))  # envs over the 4 devices of both processes
    ids = np.arange(8, dtype=np.int32)
    acts = np.arange(2 * 8 * 3, dtype=np.int32).reshape(2, 8, 3)
    lens = np.arange(16, dtype=np.int32).reshape(2, 8) % 4
    put = lambda x, spec: jax.make_array_from_callback(
        x.shape, NamedSharding(mesh, spec), lambda index: x[index])
    got = grade_on_host(HostReward(grade, 2), put(ids, P("data")), put(acts, P(None, "data")),
                        put(lens, P(None, "data")))
    want = grade(ids, acts, lens)
    del seen[-8:]  # the reference grading above
    local = all(np.array_equal(np.asarray(s.data), want[s.index]) for s in got.addressable_shards)
    print(json.dumps({"local": local, "global": not got.is_fully_addressable,
                      "graded": sorted(seen)}))
""")


@pytest.mark.slow
def test_each_process_grades_only_its_own_environments():
    """Two processes over loopback, envs split over their 4 devices: each process grades the
    envs it holds, once each, and gets the right rewards on its devices."""
    from tests.test_parallel import _free_port

    address = f"localhost:{_free_port()}"
    env = {"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", _TWO_PROCESSES, address, str(i)],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert all(r["local"] and r["global"] for r in results)
    assert [r["graded"] for r in results] == [[0, 1, 2, 3], [4, 5, 6, 7]]
