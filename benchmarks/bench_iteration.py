"""Times one training iteration's phases (rollout, prepare, update) after compilation.

  python benchmarks/bench_iteration.py --config=configs/default.py --repeats=3
  python benchmarks/bench_iteration.py --preset=reference --repeats=3
  python benchmarks/bench_iteration.py --preset=reference \
      --update_variant=remat=layers --update_variant=remat=layers,grad_accum_steps=2
  python benchmarks/bench_iteration.py --config=configs/default.py \
      --iteration_variant=rollout.shared_prefix=true,ppo.shared_prefix=true

Runs the training iteration itself (`marft_jax.training.iteration.make_iteration`, as
`experiments/train.py` does) and prints the median seconds of its phases (rollout, prepare:
the padding trim, update), tokens per second of the rollout and the update, the update's
MFU (its matmul FLOPs counted from the shapes, `models.flops`, over the float32 matmul
peak measured in the same run), the process's peak RSS (`getrusage`: ru_maxrss, which
includes compilation), the memory estimate the budget uses (`algorithms.memory`) and
episodes per CPU-minute (finished episodes over the process's user + system CPU time of
the timed iterations). With `--update_variant` (PPO fields, `name=value[,name=value]`),
each variant's update phase runs on the same trajectories, alternating within every
repeat, so their times are side by side (peak RSS is then the largest of them all: measure
a setting's own peak in a run of its own).

With `--iteration_variant` (config fields, `section.name=value[,...]`), whole iterations
of the config and of each variant run instead, alternating within every repeat, each on
its own setup, state and game from the same seed, and each setting's phase medians and
episodes per CPU-minute are printed side by side (the ratio to the config's is the
throughput goal's figure).

`--preset=reference` sets the published reference's settings on the config (dual team,
8 envs, 64 new tokens at temperature 0.5, one epoch of one minibatch, the base-model critic
trunk, float32); other fields still come from the config file and `--config.*` flags that
the preset does not set. Figures go to BUILD_NOTES.md with the machine and date.
"""

import dataclasses
import resource
import time

from marft_jax.training.entry import put_project_on_path

put_project_on_path()  # config files import `configs.*`

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py", "Experiment config.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed repetitions (after one warm-up).")
_VARIANTS = flags.DEFINE_multi_string("update_variant", [], "PPO fields name=value[,...]: "
                                      "time an update with these changes too (side by side).")
_PRESET = flags.DEFINE_enum("preset", "", ["", "reference"], "Settings to apply on the config.")
_PEAK_DTYPE = flags.DEFINE_enum("peak_dtype", "float32", ["float32", "bfloat16"],
                                "Dtype of the matmul whose FLOP/s is MFU's peak (a GPU's "
                                "bf16 tensor cores: bfloat16).")
_PEAK_SIZE = flags.DEFINE_integer("peak_size", 2048, "Side of that square matmul (a GPU: 8192).")
_ITERATION_VARIANTS = flags.DEFINE_multi_string(
    "iteration_variant", [], "config fields section.name=value[,...]: run whole iterations "
    "(rollout and update, each setting its own state) with these changes too, alternating "
    "with the config's own, and compare episodes per CPU-minute ('config' = no change).")

# The published reference's own settings (REFERENCE.md): the issue-19 benchmark.
PRESETS = {"reference": {
    "team.profiles": "math_dual", "rollout.num_envs": 8, "sampling.max_new_tokens": 64,
    "sampling.temperature": 0.5, "ppo.epochs": 1, "ppo.num_minibatches": 1,
    "ppo.critic_trunk": "base", "model.dtype": "float32"}}


def _apply_preset(config, name):
    for field, value in PRESETS.get(name, {}).items():
        section, key = field.split(".")
        config[section][key] = value
    return config


def _typed(old, value: str):
    """A flag's `value` text as the type of the field's current value `old` (JSON)."""
    import json

    return value if isinstance(old, str) else type(old)(json.loads(value))


def _assignments(item: str):
    """`name=value[,name=value]` -> `[(name, value text)]`."""
    return [part.partition("=")[::2] for part in item.split(",") if part]


def _variant(ppo, item):
    """`ppo` with the PPO fields of `item` (`name=value[,...]`) changed."""
    return ppo.replace(**{name: _typed(getattr(ppo, name), value)
                          for name, value in _assignments(item)})


def _config_variant(config, item):
    """A copy of the ml_collections `config` with `section.name=value[,...]` set."""
    config = config.copy_and_resolve_references()
    for field, value in _assignments(item):
        section, name = field.split(".")
        config[section][name] = _typed(config[section][name], value)
    return config


def _compare_iterations(config, items):
    """Whole iterations of each setting, alternating within every repeat (each with its own
    setup, state and game; same seed), and their episodes per CPU-minute side by side."""
    import jax
    import numpy as np

    from marft_jax.training.config import finalize
    from marft_jax.training.iteration import PHASES, make_iteration
    from marft_jax.training.loop import initial_state
    from marft_jax.training.setup import build_setup

    runs = {}
    for item in ["config"] + [i for i in items if i != "config"]:
        setup = build_setup(finalize(config if item == "config"
                                     else _config_variant(config, item)))
        state, game = initial_state(setup)
        runs[item] = dict(setup=setup, iteration=make_iteration(setup), state=state,
                          game=game, root=jax.random.key(setup.exp.seed), episodes=0.0,
                          cpu=0.0, times={phase: [] for phase in PHASES})
    for i in range(_REPEATS.value + 1):
        for item, run in runs.items():
            cpu0 = time.process_time()  # user + system CPU of all the process's threads
            out = run["iteration"](run["setup"].base, run["state"], run["game"], run["root"],
                                   i, timed=True)
            cpu = time.process_time() - cpu0
            run["state"], run["game"] = out.state, out.game
            if i == 0:
                print(f"[{item}] first call (compile + run): " + ", ".join(
                    f"{phase} {sec:.1f}s" for phase, sec in out.seconds.items()))
                continue
            for phase, sec in out.seconds.items():
                run["times"][phase].append(sec)
            run["episodes"] += float(np.sum(np.asarray(out.traj.dones)))
            run["cpu"] += cpu
    first = None
    for item, run in runs.items():
        rate = run["episodes"] / (run["cpu"] / 60)
        first = first or rate
        phases = ", ".join(f"{phase} {np.median(v):.2f}s ({', '.join(f'{x:.2f}' for x in v)})"
                           for phase, v in run["times"].items())
        print(f"[{item}] medians: {phases}")
        print(f"[{item}] episodes per CPU-minute: {rate:.2f} ({run['episodes']:.0f} episodes, "
              f"{run['cpu']:.1f} CPU-s in {_REPEATS.value} iterations): {rate / first:.2f}x "
              "the first setting")
    print("peak RSS (ru_maxrss, all settings): "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9:.2f} GB")
    _print_device_memory()


def _matmul_peak(size: int = 2048, dtype: str = "float32", repeats: int = 5) -> float:
    """Matmul FLOP/s of `[size, size]` `dtype` operands, the best of `repeats` timed
    products (after a warm-up)."""
    import jax
    import jax.numpy as jnp

    x = jax.random.normal(jax.random.key(0), (size, size), jnp.dtype(dtype))
    product = jax.jit(lambda a, b: a @ b)
    jax.block_until_ready(product(x, x))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(product(x, x))
        best = min(best, time.perf_counter() - t0)
    return 2 * size ** 3 / best


def _update_flops(setup, ppo, traj, row_width) -> int:
    """Model FLOPs of one update on `traj` as it runs (no rematerialisation counted): the
    batch preparation's forward passes and, per epoch, forward and backward of every row,
    each pass at its width (`ppo.row_trim`'s compacted rows, `ppo.shared_prefix`'s
    prefixes run once and the rows' remainders attending to them, with `ppo.agent_widths`
    a pass per agent at its observations' capacity, the action-level critic
    features over the observations and one action column, or none when the rollout left
    them in the trajectory, the bootstrap observation only when some episode did not
    end)."""
    import numpy as np

    from marft_jax.flexmg.layout import remainder_columns
    from marft_jax.models import flops

    model, lora = setup.model_config, setup.exp.lora
    r, a, e, o = traj.obs_tokens.shape
    k = traj.action_tokens.shape[-1]
    rows = r * a * e
    lengths = np.asarray(setup.layout.prefix.lengths)

    caps = setup.rollout_config.agent_obs_tokens

    def scored(columns, backward=False):  # one scoring pass over [obs ; `columns` actions]
        count = lambda n, t, context=0: flops.layers_forward_flops(
            model, lora, n, t, context=context, backward=backward)
        if ppo.shared_prefix and ppo.agent_widths and caps is not None:
            return sum(count(1, int(n))
                       + count(r * e, remainder_columns(min(o, c), n) + columns, int(n))
                       for n, c in zip(lengths, caps))
        if ppo.shared_prefix:
            return count(a, int(lengths.max())) + count(
                rows, remainder_columns(o, lengths.min()) + columns, int(lengths.max()))
        return count(rows, min(row_width or o + columns, o + columns))

    head = flops.head_flops(model, rows * k)
    prepare = 0
    if not bool(np.all(np.asarray(traj.dones)[-1])):
        prepare += flops.layers_forward_flops(model, lora, e, o)  # the bootstrap observation
    value_columns = 1 if ppo.spec.level == "action" else k
    from_rollout = ppo.spec.level == "action" and traj.obs_features is not None
    if (ppo.spec.uses_critic and ppo.critic_trunk == "shared" and not ppo.recompute_old_logprobs
            and not from_rollout):
        prepare += scored(value_columns)  # critic features of the old values
    if ppo.spec.uses_critic and ppo.critic_trunk == "base" and not ppo.kl_coef > 0:
        prepare += scored(value_columns)
    if ppo.recompute_old_logprobs:
        prepare += scored(k) + head
    if ppo.kl_coef > 0:
        prepare += scored(k) + head
    epoch = scored(k) + scored(k, backward=True) + 2 * head
    return prepare + ppo.epochs * epoch


def main(argv):
    del argv
    import jax
    import numpy as np

    from marft_jax.algorithms import memory
    from marft_jax.training.config import finalize
    from marft_jax.training.iteration import make_iteration
    from marft_jax.training.loop import initial_state
    from marft_jax.training.setup import build_setup, with_micro_batches

    config = _apply_preset(_CONFIG.value, _PRESET.value)
    if _ITERATION_VARIANTS.value:
        return _compare_iterations(config, _ITERATION_VARIANTS.value)
    exp = finalize(config)
    setup = build_setup(exp)
    exp = setup.exp  # grad_accum_steps resolved
    state, game = initial_state(setup)
    root = jax.random.key(exp.seed)
    variants = {"config": exp.ppo}
    for item in _VARIANTS.value:
        changed = with_micro_batches(dataclasses.replace(exp, ppo=_variant(exp.ppo, item)),
                                     setup.model_config, setup.rollout_config)
        variants[item] = changed.ppo
    iterations = {name: make_iteration(setup, ppo=ppo) for name, ppo in variants.items()}
    states = dict.fromkeys(iterations, state)
    times = {"rollout": [], "prepare": []} | {f"update[{name}]": [] for name in iterations}
    episodes, cpu_seconds = 0.0, 0.0
    for i in range(_REPEATS.value + 1):
        # The training iteration itself (rollout, trim, update), timed phase by phase.
        cpu0 = time.process_time()  # user + system CPU of all the process's threads
        out = iterations["config"](setup.base, states["config"], game, root, i, timed=True)
        cpu = time.process_time() - cpu0
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
            episodes += float(np.sum(np.asarray(traj.dones)))
            cpu_seconds += cpu
        else:
            print("first call (compile + run): "
                  + ", ".join(f"{part} {seconds:.1f}s" for part, seconds in elapsed.items()))
    peak_flops = _matmul_peak(_PEAK_SIZE.value, _PEAK_DTYPE.value)
    peak_rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
    gen_tokens = int(np.sum(np.asarray(traj.action_mask)))
    r, a, e, o = traj.obs_tokens.shape
    k = traj.action_tokens.shape[-1]
    update_tokens = r * a * e * (o + k)
    from marft_jax.algorithms import scoring
    from marft_jax.flexmg.layout import remainder_columns

    compact = scoring.row_width(traj.obs_mask, traj.action_mask) or o + k
    print(f"preset {_PRESET.value or '-'}; obs width {setup.rollout_config.obs_tokens} "
          f"(trimmed {o}), action width {k}, generated tokens {gen_tokens}, update "
          f"tokens/epoch {update_tokens}; ppo.row_trim's row width {compact} of {o + k} "
          "(last iteration)")
    lengths = np.asarray(setup.layout.prefix.lengths)
    caps = setup.rollout_config.agent_obs_tokens
    print(f"ppo.shared_prefix: prefixes {lengths.tolist()} tokens, row remainder width "
          f"{o - int(lengths.min())} (+ {k})" + ("" if caps is None else (
              f"; each agent's own (ppo.agent_widths, the rollout's waves): "
              f"{[remainder_columns(min(o, c), n) for n, c in zip(lengths, caps)]}")))
    medians = {name: float(np.median(values)) for name, values in times.items()}
    for name, values in times.items():
        print(f"{name}: median {medians[name]:.2f}s over {len(values)} "
              f"({', '.join(f'{v:.2f}' for v in values)})")
    print(f"rollout: {gen_tokens / medians['rollout']:.1f} generated tokens/s")
    print(f"matmul peak ({_PEAK_DTYPE.value} {_PEAK_SIZE.value}², measured now): "
          f"{peak_flops / 1e9:.1f} GFLOP/s on {jax.devices()[0].device_kind}")
    for name, ppo in variants.items():
        seconds = medians[f"update[{name}]"]
        flops = _update_flops(setup, ppo, traj, compact if ppo.row_trim else None)
        estimate = memory.peak_bytes(setup.model_config, r * a * (e // ppo.num_minibatches
                                                                  // ppo.grad_accum_steps),
                                     setup.rollout_config.obs_tokens + k, k, ppo.remat,
                                     ppo.head_chunk)
        print(f"update[{name}]: remat={ppo.remat} grad_accum_steps={ppo.grad_accum_steps}: "
              f"{ppo.epochs * update_tokens / seconds:.1f} tokens/s, "
              f"{flops / 1e9:.1f} GFLOP counted, MFU {flops / seconds / peak_flops:.1%}, "
              f"estimated peak {estimate / 1e9:.2f} GB (the budget's estimate: whole "
              "untrimmed rows, so high with row_trim or shared_prefix)")
    for name in variants:
        if name != "config":
            diff = max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(
                jax.tree.leaves(states[name].lora), jax.tree.leaves(states["config"].lora)))
            print(f"update[{name}]: largest adapter difference to update[config] after "
                  f"{_REPEATS.value + 1} updates: {diff:.2e}")
    print(f"episodes per CPU-minute: {episodes / (cpu_seconds / 60):.2f} ({episodes:.0f} "
          f"episodes, {cpu_seconds:.1f} CPU-s in {_REPEATS.value} iterations)")
    print(f"peak RSS (ru_maxrss): {peak_rss_gb:.2f} GB")
    _print_device_memory()


def _print_device_memory() -> None:
    """The accelerator's peak memory in use (where the backend reports it: GPU, TPU)."""
    import jax

    stats = jax.local_devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        print(f"device peak memory in use: {stats['peak_bytes_in_use'] / 1e9:.2f} GB of "
              f"{stats.get('bytes_limit', 0) / 1e9:.1f} GB ({jax.devices()[0].device_kind})")


if __name__ == "__main__":
    app.run(main)
