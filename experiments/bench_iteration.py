"""Times one training iteration's parts (rollout, update) for a config, after compilation.

  python experiments/bench_iteration.py --config=configs/default.py --repeats=3

Prints the median seconds of the rollout and of the update, and tokens processed, so the
CPU main job can be sized. Figures go to BUILD_NOTES.md with the machine and date.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py", "Experiment config.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed repetitions (after one warm-up).")


def main(argv):
    del argv
    import jax
    import numpy as np

    from marft_jax.algorithms.update import make_update
    from marft_jax.flexmg.trajectory import trim_padding
    from marft_jax.training.config import finalize
    from marft_jax.training.loop import initial_state
    from marft_jax.training.setup import build_setup, make_team_rollout

    exp = finalize(_CONFIG.value)
    setup = build_setup(exp)
    state, game = initial_state(setup)
    rollout = jax.jit(make_team_rollout(setup, setup.train, setup.rollout_config,
                                        float(exp.sampling["temperature"])))
    update = make_update(setup.graphdef, exp.ppo, exp.team.graph)
    times = {"rollout": [], "update": []}
    for i in range(_REPEATS.value + 1):
        key = jax.random.key(i)
        t0 = time.perf_counter()
        game, traj = rollout((setup.base, state.lora), game, key)
        jax.block_until_ready(traj)
        t1 = time.perf_counter()
        traj = trim_padding(traj)
        state, metrics = update(state, setup.base, traj, key)
        jax.block_until_ready(metrics)
        t2 = time.perf_counter()
        if i:
            times["rollout"].append(t1 - t0)
            times["update"].append(t2 - t1)
        else:
            print(f"first call (compile + run): rollout {t1 - t0:.1f}s, update {t2 - t1:.1f}s")
    gen_tokens = int(np.sum(np.asarray(traj.action_mask)))
    update_tokens = int(np.prod(traj.obs_tokens.shape[:3])) * (
        traj.obs_tokens.shape[-1] + traj.action_tokens.shape[-1])
    print(f"obs width {setup.rollout_config.obs_tokens} (trimmed {traj.obs_tokens.shape[-1]}), "
          f"action width {traj.action_tokens.shape[-1]}, generated tokens {gen_tokens}, "
          f"update tokens/epoch {update_tokens}")
    for name, values in times.items():
        print(f"{name}: median {np.median(values):.2f}s over {len(values)} "
              f"({', '.join(f'{v:.2f}' for v in values)})")


if __name__ == "__main__":
    app.run(main)
