"""Times one training iteration's parts (rollout, update) for a config, after compilation.

  python experiments/bench_iteration.py --config=configs/default.py --repeats=3
  python experiments/bench_iteration.py --config=configs/default.py \
      --update_variant=critic_trunk=base --update_variant=critic_trunk=shared

Prints the median seconds of the rollout and of the update, and tokens processed, so the
CPU main job can be sized. With `--update_variant` (PPO fields, `name=value`), each variant's
update runs on the same trajectories, alternating within every repeat, so their times are
side by side. Figures go to BUILD_NOTES.md with the machine and date.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py", "Experiment config.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed repetitions (after one warm-up).")
_VARIANTS = flags.DEFINE_multi_string("update_variant", [], "PPO field=value: time an update "
                                      "with this change too (side by side).")


def _variant(ppo, item):
    import json

    name, _, value = item.partition("=")
    old = getattr(ppo, name)
    if not isinstance(old, str):
        value = type(old)(json.loads(value))
    return ppo.replace(**{name: value})


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
    variants = {"config": exp.ppo} | {v: _variant(exp.ppo, v) for v in _VARIANTS.value}
    updates = {name: (make_update(setup.graphdef, ppo, exp.team.graph), state)
               for name, ppo in variants.items()}
    times = {"rollout": []} | {f"update[{name}]": [] for name in updates}
    for i in range(_REPEATS.value + 1):
        key = jax.random.key(i)
        t0 = time.perf_counter()
        game, traj = rollout((setup.base, state.lora), game, key)
        jax.block_until_ready(traj)
        t1 = time.perf_counter()
        traj = trim_padding(traj)
        first = [f"rollout {t1 - t0:.1f}s"]
        for name, (update, st) in updates.items():
            t2 = time.perf_counter()
            st, metrics = update(st, setup.base, traj, key)
            jax.block_until_ready(metrics)
            elapsed = time.perf_counter() - t2
            updates[name] = (update, st)
            if i:
                times[f"update[{name}]"].append(elapsed)
            first.append(f"update[{name}] {elapsed:.1f}s")
        if i:
            times["rollout"].append(t1 - t0)
        else:
            print(f"first call (compile + run): {', '.join(first)}")
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
