"""Runs a study (conditions × seeds) and writes its CSV, Markdown table and learning curves.

  marft-study --study=configs/studies/tokens.py --seeds=0,1,2
  marft-study --study=configs/studies/learning.py --seeds=0,1,2 --out=runs/study_learning
  marft-study --study=configs/studies/learning.py --only=marft_a_dual \\
      --set=train.iterations=10 --dry_run

(or `python experiments/repro_study.py ...`, the form the reproducing commands take).

Conditions whose rollout is JAX-native (token tasks) train all seeds as one jitted,
seed-vmapped program; the others run `experiments/train.py` once per seed (a subprocess,
its log beside the run directory). A finished run (its summary.json present) is reused and
an interrupted one resumed (`train.py --resume`; seed-vmapped conditions start over), so an
interrupted study continues where it stopped; `--rerun` starts over. Runs that are
replaced are set aside (`<seed dir>.replaced-<n>`, `.interrupted-<n>`), never deleted.
`--set` applies to
every condition, except that untrained baselines (`train.iterations=0`) stay untrained.
Writes into --out:
`results.csv` (one row per run, with the command that reproduces it), `summary.md`,
`summary.json` and `learning_curves.png`.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

from absl import flags, logging

from marft_jax.training.entry import one_line_errors, run_app

_STUDY = flags.DEFINE_string("study", "configs/studies/learning.py", "Study file.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds.")
_OUT = flags.DEFINE_string("out", None, "Output directory (default runs/study_<name>).")
_ONLY = flags.DEFINE_list("only", [], "Run only these conditions.")
_SET = flags.DEFINE_multi_string("set", [], "field=value applied to every condition.")
_VMAP = flags.DEFINE_bool("vmap", True, "Seed-vmap conditions with a JAX-native rollout.")
_RERUN = flags.DEFINE_bool("rerun", False, "Rerun runs that already finished.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the commands and stop.")
_REPORT_ONLY = flags.DEFINE_bool("report_only", False, "Run nothing: report the finished "
                                 "runs of the grid (the others are listed as missing).")


def _parse_set(items):
    from marft_jax.errors import ConfigError

    out = {}
    for item in items:
        field, sep, value = item.partition("=")
        if not sep or not field:
            raise ConfigError(f"--set {item!r}: expected field=value")
        out[field] = value
    return out


def _typed(config, overrides):
    """String --set values converted to the type of the field they replace."""
    from marft_jax.errors import ConfigError

    typed = {}
    for field, value in overrides.items():
        node = config
        try:
            for part in field.split("."):
                node = node[part]
        except (KeyError, AttributeError):
            raise ConfigError(f"--set: config field '{field}' does not exist") from None
        if isinstance(value, str) and not isinstance(node, str):
            try:
                value = type(node)(json.loads(value.lower() if isinstance(node, bool)
                                              else value))
            except (ValueError, TypeError):
                raise ConfigError(f"--set: config field '{field}': {value!r} is not a "
                                  f"{type(node).__name__}") from None
        typed[field] = value
    return typed


def _finished(run_dir: Path, iterations: int) -> bool:
    path = run_dir / "summary.json"
    return path.exists() and json.loads(path.read_text()).get("iterations") == iterations


def _set_aside(run_dir: Path, why: str) -> Path:
    """Renames a run directory (and its log) to `<name>.<why>-<n>`: nothing is deleted."""
    n = 1
    while run_dir.with_name(f"{run_dir.name}.{why}-{n}").exists():
        n += 1
    target = run_dir.with_name(f"{run_dir.name}.{why}-{n}")
    run_dir.rename(target)
    log = run_dir.parent / f"{run_dir.name}.log"
    if log.exists():
        log.rename(target.parent / f"{target.name}.log")
    return target


def plan_run_dirs(dirs: list[Path], iterations: int, rerun: bool,
                  vmapped: bool) -> tuple[list[int], set[int]]:
    """Which seeds of a condition to run, and which of those to resume.

    A finished run is reused (`rerun`: set aside, then run again). A started but unfinished
    run (its config.json written: an interrupted study) is resumed where a seed runs alone
    (`train.py --resume`, bitwise identical to an uninterrupted run); seed-vmapped runs
    cannot resume, so it is set aside and the condition starts over. Set-aside directories
    keep their contents under `<name>.replaced-<n>` / `<name>.interrupted-<n>`.

    Returns:
        `(todo, resume)`: indices into `dirs`.
    """
    todo, resume = [], set()
    for i, d in enumerate(dirs):
        finished = _finished(d, iterations)
        if finished and not rerun:
            continue
        todo.append(i)
        if not (d / "config.json").exists():
            if d.exists() and any(d.iterdir()):
                logging.warning("%s: not a finished run; set aside as %s", d,
                                _set_aside(d, "interrupted"))
            continue
        if finished or vmapped:
            why = "replaced" if finished else "interrupted"
            logging.warning("%s: %s run set aside as %s", d, why, _set_aside(d, why))
        else:
            resume.add(i)
    if vmapped and todo:  # one program trains every seed: rerun them all together
        for i, d in enumerate(dirs):
            if i not in todo and d.exists():
                logging.warning("%s: set aside as %s (its seeds are trained together)", d,
                                _set_aside(d, "replaced"))
        todo = list(range(len(dirs)))
    return todo, resume


def _run_subprocess(condition, seed, run_dir, extra, resume=False):
    from marft_jax.paths import project_root
    from marft_jax.training.study import shell, train_command

    command = train_command(condition, seed, run_dir, extra) + (["--resume"] if resume else [])
    log_path = run_dir.parent / f"{run_dir.name}.log"
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    logging.info("%s seed %d: %s", condition.name, seed, shell(command))
    t0 = time.perf_counter()
    with open(log_path, "a" if resume else "w") as log:
        proc = subprocess.run([sys.executable] + command[1:], cwd=project_root(), stdout=log,
                              stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-5:])
        raise RuntimeError(f"{condition.name} seed {seed} failed (exit {proc.returncode}); "
                           f"log {log_path}:\n{tail}")
    # A resumed run's wall time counts only the part after the interruption.
    (run_dir / "study_wall.json").write_text(json.dumps({"wall_s": wall, "resumed": resume}))


def _study(argv):
    del argv
    from marft_jax.errors import ConfigError
    from marft_jax.training.config import finalize
    from marft_jax.training.entry import quiet_library_logs
    from marft_jax.training.run_dir import prepare_run_dir, read_metrics
    from marft_jax.training.seed_vmap import can_vmap_seeds, train_seeds
    from marft_jax.training.study import (compare, comparisons_table, load_comparisons,
                                          load_config, load_study, markdown_table,
                                          plot_curves, result_from_run, shell, summarize,
                                          train_command, write_csv)

    quiet_library_logs()
    study_path = Path(_STUDY.value)
    out = Path(_OUT.value or f"runs/study_{study_path.stem}")
    with one_line_errors(ValueError):
        seeds = [int(s) for s in _SEEDS.value]
        conditions = load_study(study_path)
        comparisons = load_comparisons(study_path)
        unknown = sorted(set(_ONLY.value) - {c.name for c in conditions})
        if unknown:
            raise ConfigError(f"--only: {unknown} not in {study_path} "
                              f"({[c.name for c in conditions]})")
        wanted = set(_ONLY.value) | {c.baseline for c in conditions
                                     if c.name in _ONLY.value and c.baseline}
        conditions = [c for c in conditions if not _ONLY.value or c.name in wanted]
        plans = []
        for cond in conditions:  # validate every condition before running any
            config = load_config(cond.config, cond.overrides)
            extra = _typed(config, _parse_set(_SET.value))
            if cond.overrides.get("train.iterations") == 0:  # baselines stay untrained
                extra.pop("train.iterations", None)
            config.update_from_flattened_dict(extra)
            exps = []
            for seed in (cond.seeds or seeds):
                config.seed = seed
                exps.append(finalize(config.copy_and_resolve_references()))
            plans.append((cond, extra, exps))

    study_cmd = ["python", "experiments/repro_study.py", f"--study={study_path}",
                 f"--seeds={','.join(map(str, seeds))}", f"--out={out}"] + \
        [f"--set={s}" for s in _SET.value]
    results = []
    for cond, extra, exps in plans:
        dirs = [out / cond.name / f"seed{e.seed}" for e in exps]
        vmapped = _VMAP.value and can_vmap_seeds(exps[0])
        commands = ([shell(study_cmd + [f"--only={cond.name}"])] * len(exps) if vmapped else
                    [shell(train_command(cond, e.seed, d, extra)) for e, d in zip(exps, dirs)])
        if _DRY_RUN.value:
            print("\n".join(sorted(set(commands))))
            continue
        iterations = exps[0].train.iterations
        if _REPORT_ONLY.value:
            todo = [i for i, d in enumerate(dirs) if not _finished(d, iterations)]
            for i in todo:
                logging.warning("%s seed %d: not run (missing from the report)", cond.name,
                                exps[i].seed)
            keep = [i for i in range(len(exps)) if i not in todo]
            exps, dirs = [exps[i] for i in keep], [dirs[i] for i in keep]
            commands, todo = [commands[i] for i in keep], []
        else:
            todo, resume = plan_run_dirs(dirs, iterations, _RERUN.value, vmapped)
        if vmapped and todo:
            for e, d in zip(exps, dirs):
                prepare_run_dir(e.config, d, resume=False)
            t0 = time.perf_counter()
            train_seeds(exps, dirs)
            wall = (time.perf_counter() - t0) / len(exps)
            for d in dirs:
                (d / "study_wall.json").write_text(json.dumps({"wall_s": wall,
                                                               "vmapped_seeds": len(exps)}))
        elif todo:
            for i in todo:
                _run_subprocess(cond, exps[i].seed, dirs[i], extra, resume=i in resume)
        for e, d, command in zip(exps, dirs, commands):
            summary = json.loads((d / "summary.json").read_text())
            wall = json.loads((d / "study_wall.json").read_text())["wall_s"] \
                if (d / "study_wall.json").exists() else float("nan")
            results.append(result_from_run(cond.name, e.seed, d, summary, read_metrics(d),
                                           wall, command))
    if _DRY_RUN.value:
        return
    order = [c.name for c, _, _ in plans]
    rows = summarize(results, order, {c.name: c.baseline for c, _, _ in plans if c.baseline})
    out.mkdir(parents=True, exist_ok=True)
    write_csv(results, out / "results.csv")
    note = "replace the seed in the command (vmapped conditions run all seeds at once)."
    ran = {r.condition for r in results}
    compared = [compare(results, c) for c in comparisons if {c.first, c.second} <= ran]
    (out / "summary.md").write_text(markdown_table(rows, note) + (
        "\n## Comparisons\n\n" + comparisons_table(compared) if compared else ""))
    (out / "summary.json").write_text(json.dumps({"conditions": rows, "comparisons": compared},
                                                 indent=1, default=float))
    plot_curves(results, order, out / "learning_curves.png")
    print((out / "summary.md").read_text())
    logging.info("wrote %s", out)


def main() -> None:
    """`marft-study`: parses the command line and runs the study."""
    logging.set_verbosity(logging.INFO)
    run_app(_study, __name__, __doc__)
