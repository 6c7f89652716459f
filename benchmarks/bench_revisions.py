"""Episodes per CPU-minute of a config's training iterations: this checkout against a git
revision, in alternating processes.

  python benchmarks/bench_revisions.py --against=6df7345 --config=configs/default.py \
      --rounds=2 --iterations=3

Checks the revision out into a temporary git worktree, then runs, `--rounds` times, one
process on the revision's code and one on this checkout's (alternating, so a machine that
slows down slows both), each timing `--iterations` whole training iterations after one
compiling warm-up: the iteration of `marft_jax.training.iteration.make_iteration`, as the
training loop runs it, on the config file of that checkout. Prints each process's episodes
per CPU-minute (finished episodes over the process's user + system CPU time of the timed
iterations, as `bench_iteration.py` counts them) and phase medians, then the medians over
rounds and their ratio. `bench_iteration.py --iteration_variant` compares settings of one
checkout; this compares code, e.g. against the revision an issue's goal was set on. The
worktree is removed afterwards; both read this checkout's data root (`marft_jax.paths`).

Each process also prints its start-up: the setup (model, data, initial state) and the first
iteration's phases, compilation included. With `--compilation_cache`, every child shares
one temporary JAX persistent compilation cache (`JAX_COMPILATION_CACHE_DIR`), so from the
second round on a process starts as a re-launched run does: it loads what its code's
programs compiled to instead of compiling them (programs holding host callbacks are never
cached). Figures go to BUILD_NOTES.md with the machine and date.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def _measure(root: str, config: str, iterations: int) -> dict:
    """Child process: `iterations` timed training iterations of `config` in checkout `root`."""
    os.chdir(root)
    sys.path.insert(0, root)  # this checkout's marft_jax and configs, not the installed ones
    import importlib

    import jax
    import numpy as np

    from marft_jax.training.config import finalize
    from marft_jax.training.iteration import make_iteration
    from marft_jax.training.loop import initial_state
    from marft_jax.training.setup import build_setup

    module = config.removesuffix(".py").replace("/", ".")
    start = time.perf_counter()
    exp = finalize(importlib.import_module(module).get_config())
    setup = build_setup(exp)
    state, game = initial_state(setup)
    iteration = make_iteration(setup)
    key = jax.random.key(exp.seed)
    first = dict(setup=time.perf_counter() - start)
    rows = []
    for i in range(iterations + 1):  # the first call compiles: not counted
        cpu0 = time.process_time()  # user + system CPU of all the process's threads
        out = iteration(setup.base, state, game, key, i, timed=True)
        cpu = time.process_time() - cpu0
        state, game = out.state, out.game
        seconds = {phase: float(s) for phase, s in out.seconds.items()}
        if i:
            rows.append(dict(cpu=cpu, episodes=float(np.sum(np.asarray(out.traj.dones))),
                             **seconds))
        else:
            first.update(seconds)
    return dict(rows=rows, first=first)


def _child(root: str, args, cache: str | None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), f"--child={root}",
           f"--config={args.config}", f"--iterations={args.iterations}"]
    from marft_jax.paths import DATA_ENV_VAR, data_root

    # The worktree has no ../shared beside it: both read this checkout's data root.
    env = dict(os.environ, PYTHONPATH=root, **{DATA_ENV_VAR: str(data_root())})
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    if cache:
        env["JAX_COMPILATION_CACHE_DIR"] = cache
    done = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    if done.returncode or not lines:
        sys.exit(f"bench_revisions: the run in {root} failed (exit {done.returncode}):\n"
                 + done.stderr[-3000:])
    return json.loads(lines[-1][len("RESULT "):])


def _summary(run: dict) -> tuple[float, str]:
    rows = run["rows"]
    rate = sum(r["episodes"] for r in rows) / (sum(r["cpu"] for r in rows) / 60)
    phases = [p for p in rows[0] if p not in ("cpu", "episodes")]
    text = ", ".join(f"{p} {statistics.median(r[p] for r in rows):.2f}s" for p in phases)
    text += "; start-up " + ", ".join(f"{p} {s:.1f}s" for p, s in run["first"].items())
    return rate, text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--against", help="git revision to compare this checkout with")
    p.add_argument("--config", default="configs/default.py",
                   help="config file, relative to each checkout")
    p.add_argument("--rounds", type=int, default=2, help="alternating process pairs")
    p.add_argument("--iterations", type=int, default=3, help="timed iterations a process")
    p.add_argument("--compilation_cache", action="store_true",
                   help="every child shares one temporary JAX persistent compilation cache")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print("RESULT " + json.dumps(_measure(args.child, args.config, args.iterations)),
              flush=True)
        return
    if not args.against:
        p.error("--against=REV is required")
    with tempfile.TemporaryDirectory(prefix="bench_revisions_") as tmp:
        old = str(Path(tmp) / "rev")
        cache = str(Path(tmp) / "jax_cache") if args.compilation_cache else None
        subprocess.run(["git", "-C", str(HERE), "worktree", "add", "--detach", "-q", old,
                        args.against], check=True)
        try:
            rates = {args.against: [], "this checkout": []}
            for round_ in range(1, args.rounds + 1):
                for name, root in ((args.against, old), ("this checkout", str(HERE))):
                    rate, text = _summary(_child(root, args, cache))
                    rates[name].append(rate)
                    print(f"round {round_} [{name}] {time.strftime('%H:%M:%S')}: "
                          f"{rate:.2f} episodes per CPU-minute; medians {text}", flush=True)
        finally:
            subprocess.run(["git", "-C", str(HERE), "worktree", "remove", "--force", old],
                           check=False)
    base, new = (statistics.median(v) for v in rates.values())
    print(f"median over {args.rounds} rounds: {args.against} {base:.2f}, this checkout "
          f"{new:.2f} episodes per CPU-minute: {new / base:.2f}x")
    ratios = [n / b for b, n in zip(*rates.values())]
    print("per round: " + ", ".join(f"{r:.2f}x" for r in ratios))


if __name__ == "__main__":
    main()
