"""Times one training iteration's phases (rollout, prepare, update) after compilation.

  python benchmarks/bench_iteration.py --config=configs/default.py --repeats=3
  python benchmarks/bench_iteration.py --config=configs/default.py \
      --update_variant=critic_trunk=base --update_variant=critic_trunk=shared

Runs the training iteration itself (`marft_jax.training.iteration.make_iteration`, as
`experiments/train.py` does) and prints the median seconds of its phases (rollout, prepare:
the padding trim, update) and the tokens processed, so the CPU main job can be sized. With
`--update_variant` (PPO fields, `name=value`), each variant's update phase runs on the same
trajectories, alternating within every repeat, so their times are side by side. Figures
go to BUILD_NOTES.md with the machine and date.
"""

import time

from marft_jax.training.entry import put_project_on_path

put_project_on_path()  # config files import `configs.*`

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

    from marft_jax.training.config import finalize
    from marft_jax.training.iteration import make_iteration
    from marft_jax.training.loop import initial_state
    from marft_jax.training.setup import build_setup

    exp = finalize(_CONFIG.value)
    setup = build_setup(exp)
    state, game = initial_state(setup)
    root = jax.random.key(exp.seed)
    variants = {"config": exp.ppo} | {v: _variant(exp.ppo, v) for v in _VARIANTS.value}
    iterations = {name: make_iteration(setup, ppo=ppo) for name, ppo in variants.items()}
    states = dict.fromkeys(iterations, state)
    times = {"rollout": [], "prepare": []} | {f"update[{name}]": [] for name in iterations}
    for i in range(_REPEATS.value + 1):
        # The training iteration itself (rollout, trim, update), timed phase by phase.
        out = iterations["config"](setup.base, states["config"], game, root, i, timed=True)
        game, traj, states["config"] = out.game, out.traj, out.state
        elapsed = {"rollout": out.seconds["rollout"], "prepare": out.seconds["prepare"],
                   "update[config]": out.seconds["update"]}
        # Variants: their update phase on the same trajectory (already trimmed).
        for name, iteration in iterations.items():
            if name == "config":
                continue
            same_traj, words = iteration.prepare(traj)
            t0 = time.perf_counter()
            states[name], metrics = iteration.update_phase(setup.base, states[name],
                                                           same_traj, words, root, i)
            jax.block_until_ready(metrics)
            elapsed[f"update[{name}]"] = time.perf_counter() - t0
        if i:
            for part, seconds in elapsed.items():
                times[part].append(seconds)
        else:
            print("first call (compile + run): "
                  + ", ".join(f"{part} {seconds:.1f}s" for part, seconds in elapsed.items()))
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
