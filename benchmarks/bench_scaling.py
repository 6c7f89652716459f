"""Throughput against device count: rollout and update tokens/s per mesh layout.

  python benchmarks/bench_scaling.py --devices=4 --config=configs/tiny_cpu.py \
      --config.rollout.num_envs=32 --layouts=1,1,1,auto/2,1,1,auto/4,1,1,auto

Runs in one process on `--devices` devices (on a CPU host they are forced host devices:
XLA_FLAGS is set before JAX starts, so with few cores this measures the overhead of
sharding, not a speed-up). Each layout `DATA,FSDP,TP,MODE` builds its plan over the first
DATA·FSDP·TP devices and runs the training iteration (`make_iteration`, as
`experiments/train.py` does) `--repeats` times after a warm-up, timing its rollout and
update phases. Rollout tokens are the generated (real) action tokens; update
tokens are the `[obs ; action]` positions scored per epoch (trimmed rows × width ×
epochs), so both count the work done, whatever the layout.
"""

import os
import sys


def _devices_from_argv(default: int = 4) -> int:
    for arg in sys.argv[1:]:
        if arg.startswith("--devices="):
            return int(arg.split("=", 1)[1])
    return default


_XLA_FLAGS = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _XLA_FLAGS:  # before JAX starts
    os.environ["XLA_FLAGS"] = (f"{_XLA_FLAGS} --xla_force_host_platform_device_count="
                               f"{_devices_from_argv()}").strip()
from marft_jax.training.entry import put_project_on_path  # noqa: E402

put_project_on_path()  # config files import `configs.*`

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/tiny_cpu.py", "Experiment config.")
flags.DEFINE_integer("devices", 4, "Host devices to force (CPU; read before JAX starts).")
_LAYOUTS = flags.DEFINE_string(
    "layouts", "1,1,1,auto/2,1,1,auto/4,1,1,auto/4,1,1,shard_map/2,2,1,auto/2,1,2,auto",
    "Slash-separated DATA,FSDP,TP,MODE layouts.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repetitions per layout (after warm-up).")
_OUT = flags.DEFINE_string("out", None, "Optional JSON file for the figures.")


def _bench(exp, layout: str, repeats: int) -> dict:
    import jax
    import numpy as np

    from marft_jax import parallel
    from marft_jax.training.iteration import make_iteration
    from marft_jax.training.loop import initial_state, place_setup
    from marft_jax.training.setup import build_setup

    data, fsdp, tp, mode = layout.split(",")
    mesh = parallel.MeshConfig(data=int(data), fsdp=int(fsdp), tp=int(tp), mode=mode)
    plan = parallel.plan_for(mesh)
    plan.check_update(exp.ppo, exp.rollout.num_envs)
    setup = place_setup(build_setup(exp), plan)
    state, game = initial_state(setup, plan)
    iteration = make_iteration(setup, plan, state=state)
    root = jax.random.key(exp.seed)
    times = {"rollout": [], "update": []}
    tokens = {"rollout": [], "update": []}
    compile_s = {}
    for i in range(repeats + 1):
        out = iteration(setup.base, state, game, root, i, timed=True)
        state, game, traj = out.state, out.game, out.traj
        if i == 0:
            compile_s = {"rollout": out.seconds["rollout"], "update": out.seconds["update"]}
            continue
        times["rollout"].append(out.seconds["rollout"])
        times["update"].append(out.seconds["update"])
        tokens["rollout"].append(int(np.sum(parallel.Plan.fetch(traj.action_mask))))
        r, a, e, o = traj.obs_tokens.shape
        tokens["update"].append(r * a * e * (o + traj.action_tokens.shape[-1])
                                * exp.ppo.epochs)
    result = {"layout": layout, "devices": plan.num_devices, "compile_s": compile_s}
    for part in ("rollout", "update"):
        result[f"{part}_s"] = float(np.median(times[part]))
        result[f"{part}_tokens_per_s"] = float(np.sum(tokens[part]) / np.sum(times[part]))
    return result


def main(argv):
    del argv
    import json
    import platform

    import jax

    from marft_jax.training.config import finalize

    exp = finalize(_CONFIG.value)
    print(f"{jax.device_count()} {jax.devices()[0].platform} devices, {os.cpu_count()} cores "
          f"({platform.processor() or platform.machine()}); envs {exp.rollout.num_envs}, "
          f"rounds {exp.rollout.num_rounds}, new tokens {exp.sampling.max_new_tokens}, "
          f"model {exp.model_name}")
    print(f"{'layout':<22}{'devices':>8}{'rollout s':>11}{'rollout tok/s':>15}"
          f"{'update s':>10}{'update tok/s':>14}{'compile s (r/u)':>18}")
    results = []
    for layout in _LAYOUTS.value.split("/"):
        r = _bench(exp, layout, _REPEATS.value)
        results.append(r)
        print(f"{layout:<22}{r['devices']:>8}{r['rollout_s']:>11.3f}"
              f"{r['rollout_tokens_per_s']:>15.1f}{r['update_s']:>10.3f}"
              f"{r['update_tokens_per_s']:>14.0f}"
              f"{r['compile_s']['rollout']:>9.1f}/{r['compile_s']['update']:.1f}", flush=True)
    if _OUT.value:
        with open(_OUT.value, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    app.run(main)
