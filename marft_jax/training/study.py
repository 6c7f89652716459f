"""Reproducibility studies: a grid of conditions × seeds, and its statistics and report.

A study file (`configs/studies/<name>.py`) defines `get_study()`, a list of `Condition`s:
a name, a config file and field overrides. `experiments/repro_study.py` runs every
(condition, seed) — as `experiments/train.py` subprocesses, or for JAX-native rollouts as
one seed-vmapped program (`training.seed_vmap`) — and this module turns the run directories
into a CSV (one row per run), a Markdown table (per condition: mean ± std and a 95 % t
interval over seeds of held-out accuracy before and after training and of the gain) and
learning curves with seed bands.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import math
import shlex
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from marft_jax.errors import ConfigError

# Two-sided 95 % Student t quantiles t(0.975, df) for df = 1..30; 1.96 beyond.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


@dataclasses.dataclass(frozen=True)
class Condition:
    """One row of a study: `config` (a configs/*.py file) with `overrides` applied.

    Attributes:
        name: a short label (file-name safe).
        config: path of the config file, relative to the project root or absolute.
        overrides: `{"ppo.algorithm": "marft_t", ...}` dotted config fields.
        seeds: run these seeds instead of the study's (e.g. `(0,)` for a greedy evaluation
            of an untrained team, which no seed changes); None = the study's seeds.
        baseline: the condition whose held-out accuracy stands for "before" when a run does
            not evaluate itself before training (`train.eval_before=False`): an untrained
            team evaluated the same way, the same for every seed.
    """

    name: str
    config: str
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    seeds: tuple[int, ...] | None = None
    baseline: str | None = None


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Two conditions of a study compared on held-out accuracy after training.

    Attributes:
        first, second: condition names; the report gives first − second.
        question: what the comparison answers (e.g. "does the team beat one agent?").
    """

    first: str
    second: str
    question: str = ""


def _study_module(path: Path):
    if not path.is_file():
        raise ConfigError(f"{path}: study file not found")
    spec = importlib.util.spec_from_file_location(f"_study_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # a study file is user code: report it on one line
        raise ConfigError(f"{path}: cannot load the study: {type(e).__name__}: {e}") from None
    return module


def load_study(path: str | Path) -> list[Condition]:
    """The conditions of a study file (`get_study()`); ConfigError names a bad file."""
    path = Path(path)
    return _conditions(_study_module(path), path)


def _conditions(module, path: Path) -> list[Condition]:
    try:
        conditions = list(module.get_study())
    except Exception as e:
        raise ConfigError(f"{path}: cannot load the study: {type(e).__name__}: {e}") from None
    names = [c.name for c in conditions]
    if not conditions or not all(isinstance(c, Condition) for c in conditions):
        raise ConfigError(f"{path}: get_study() must return a non-empty list of Condition")
    if len(set(names)) != len(names) or not all(n.replace("_", "").replace("-", "").isalnum()
                                                for n in names):
        raise ConfigError(f"{path}: condition names must be unique and file-name safe, got "
                          f"{names}")
    return conditions


def load_comparisons(path: str | Path) -> list[Comparison]:
    """The study file's `get_comparisons()` (optional: none without it); ConfigError when
    one names a condition the study does not have. The file runs once."""
    path = Path(path)
    module = _study_module(path)
    if not hasattr(module, "get_comparisons"):
        return []
    names = {c.name for c in _conditions(module, path)}
    comparisons = list(module.get_comparisons())
    for c in comparisons:
        if not isinstance(c, Comparison):
            raise ConfigError(f"{path}: get_comparisons() must return Comparison entries")
        unknown = sorted({c.first, c.second} - names)
        if unknown:
            raise ConfigError(f"{path}: comparison {c.first} vs {c.second}: no condition "
                              f"{unknown[0]!r}")
    return comparisons


def load_config(path: str | Path, overrides: dict[str, Any]) -> ml_collections.ConfigDict:
    """`get_config()` of a config file with dotted-field overrides applied."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    spec = importlib.util.spec_from_file_location(f"_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    for field, value in overrides.items():
        try:
            config.update_from_flattened_dict({field: value})
        except (KeyError, AttributeError, TypeError, ValueError) as e:
            raise ConfigError(f"config field '{field}': cannot set {value!r} ({e})") from None
    return config


def _cli_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (tuple, list)):
        return repr(tuple(value))
    return str(value)


def train_command(condition: Condition, seed: int, run_dir: str | Path,
                  extra: dict[str, Any] | None = None) -> list[str]:
    """The `experiments/train.py` command line of one (condition, seed)."""
    fields = {**condition.overrides, **(extra or {}), "seed": seed}
    return (["python", "experiments/train.py", f"--config={condition.config}",
             f"--run_dir={run_dir}"]
            + [f"--config.{k}={_cli_value(v)}" for k, v in fields.items()])


def shell(command: list[str]) -> str:
    """A command as one copy-pasteable shell line."""
    return " ".join(shlex.quote(part) for part in command)


# ------------------------------------------------------------------------- statistics

def mean_std_ci(values: list[float]) -> dict[str, float]:
    """Mean, sample std (ddof 1) and the half-width of a 95 % t interval of the mean."""
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], np.float64)
    n = len(x)
    if n == 0:
        return {"n": 0, "mean": math.nan, "std": math.nan, "ci95": math.nan}
    std = float(x.std(ddof=1)) if n > 1 else math.nan
    t = _T975[n - 2] if 2 <= n <= 31 else 1.96
    return {"n": n, "mean": float(x.mean()), "std": std,
            "ci95": t * std / math.sqrt(n) if n > 1 else math.nan}


@dataclasses.dataclass
class RunResult:
    """What one (condition, seed) run produced."""

    condition: str
    seed: int
    before: float | None
    after: float | None
    final_score: float | None  # mean rollout score of the last iterations
    wall_s: float
    iterations: int
    command: str
    run_dir: str
    curve: list[tuple[int, float]]  # (iteration, rollout score)
    after_sampled: float | None = None  # held-out, sampled at the training temperature
    after_strict: float | None = None  # held-out greedy, boxed answers only


def result_from_run(condition: str, seed: int, run_dir: str | Path, summary: dict[str, Any],
                    records: list[dict[str, Any]], wall_s: float, command: str,
                    last: int = 5) -> RunResult:
    """Collects a run's summary and metrics records into a `RunResult`."""
    acc = lambda e, key="accuracy": None if not e else e.get(key)
    curve = [(r["step"], r["rollout/score"]) for r in records if "rollout/score" in r]
    final = float(np.mean([s for _, s in curve[-last:]])) if curve else None
    after = summary.get("eval_after")
    return RunResult(condition, seed, acc(summary.get("eval_before")), acc(after), final,
                     wall_s, int(summary.get("iterations", 0)), command, str(run_dir), curve,
                     after_sampled=acc((after or {}).get("sampled")),
                     after_strict=acc(after, "accuracy_strict"))


_NONE = {"n": 0}


def _fmt(stat: dict[str, float], scale: float = 100.0) -> str:
    if stat["n"] == 0:
        return "–"
    if stat["n"] == 1:
        return f"{scale * stat['mean']:.1f}"
    return (f"{scale * stat['mean']:.1f} ± {scale * stat['std']:.1f} "
            f"[{scale * (stat['mean'] - stat['ci95']):.1f}, "
            f"{scale * (stat['mean'] + stat['ci95']):.1f}]")


def summarize(results: list[RunResult], order: list[str],
              baselines: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Per condition (in `order`): statistics over its seeds.

    A run without its own "before" evaluation takes the mean held-out accuracy of its
    condition's baseline (`baselines[name]`, a condition in `results`) as its before.
    """
    rows = []
    baselines = baselines or {}
    for name in order:
        runs = [r for r in results if r.condition == name]
        if not runs:
            continue
        base = [r.after for r in results if r.condition == baselines.get(name)
                and r.after is not None]
        base_before = float(np.mean(base)) if base else None
        befores = [r.before if r.before is not None else base_before for r in runs]
        gains = [r.after - b for r, b in zip(runs, befores) if r.after is not None and
                 b is not None]
        rows.append({"condition": name, "seeds": [r.seed for r in runs],
                     "before": mean_std_ci(befores),
                     "after": mean_std_ci([r.after for r in runs]),
                     "after_sampled": mean_std_ci([r.after_sampled for r in runs]),
                     "after_strict": mean_std_ci([r.after_strict for r in runs]),
                     "gain": mean_std_ci(gains),
                     "final_score": mean_std_ci([r.final_score for r in runs]),
                     "wall_s": float(np.mean([r.wall_s for r in runs])),
                     "iterations": runs[0].iterations, "command": runs[0].command})
    return rows


def _t975(df: float) -> float:
    """The 95 % two-sided t quantile at `df` degrees of freedom (rounded down: wider)."""
    d = int(math.floor(df))
    return _T975[d - 1] if 1 <= d <= 30 else 1.96


def compare(results: list[RunResult], comparison: Comparison) -> dict[str, Any]:
    """Held-out accuracy after training, `first − second`, over their seeds.

    The seeds of two conditions are independent runs, so the interval is Welch's (unequal
    variances, Welch–Satterthwaite degrees of freedom); the sample stds side by side say
    which condition is the more stable across seeds.

    Returns:
        `diff` (mean of first − mean of second), `ci95` (Welch half-width, nan with fewer
        than 2 seeds on a side), `df`, and per side `n`, `mean`, `std`, `min`, `max`.
    """
    sides = {}
    for key, name in (("first", comparison.first), ("second", comparison.second)):
        x = np.asarray([r.after for r in results if r.condition == name
                        and r.after is not None], np.float64)
        sides[key] = {"name": name, "n": len(x),
                      "mean": float(x.mean()) if len(x) else math.nan,
                      "std": float(x.std(ddof=1)) if len(x) > 1 else math.nan,
                      "min": float(x.min()) if len(x) else math.nan,
                      "max": float(x.max()) if len(x) else math.nan}
    a, b = sides["first"], sides["second"]
    out = {"question": comparison.question, "first": a, "second": b,
           "diff": a["mean"] - b["mean"], "ci95": math.nan, "df": math.nan}
    if a["n"] > 1 and b["n"] > 1:
        va, vb = a["std"] ** 2 / a["n"], b["std"] ** 2 / b["n"]
        if va + vb > 0:
            df = (va + vb) ** 2 / (va ** 2 / (a["n"] - 1) + vb ** 2 / (b["n"] - 1))
            out.update(df=df, ci95=_t975(df) * math.sqrt(va + vb))
        else:
            out.update(df=math.inf, ci95=0.0)
    return out


def comparisons_table(comparisons: list[dict[str, Any]]) -> str:
    """Markdown for `compare` results (points of held-out accuracy)."""
    lines = ["| question | first − second (points) [95 % Welch interval] | first: mean ± std "
             "(min–max) | second: mean ± std (min–max) |", "|---|---|---|---|"]
    side = lambda s: (f"{s['name']} (n={s['n']}): {100 * s['mean']:.1f} ± "
                      f"{100 * s['std']:.1f} ({100 * s['min']:.1f}–{100 * s['max']:.1f})")
    for c in comparisons:
        interval = ("" if not np.isfinite(c["ci95"]) else
                    f" [{100 * (c['diff'] - c['ci95']):+.1f}, {100 * (c['diff'] + c['ci95']):+.1f}]")
        lines.append(f"| {c['question'] or '–'} | {100 * c['diff']:+.1f}{interval} | "
                     f"{side(c['first'])} | {side(c['second'])} |")
    lines.append("")
    lines.append("Held-out greedy accuracy after training; the seeds of two conditions are "
                 "independent runs (Welch's interval). An interval that spans 0 does not "
                 "separate the two; the stds say which is the more stable across seeds.")
    return "\n".join(lines) + "\n"


def write_csv(results: list[RunResult], path: str | Path) -> None:
    """One row per run."""
    fields = ["condition", "seed", "iterations", "before", "after", "gain", "after_sampled",
              "after_strict", "final_score", "wall_s", "run_dir", "command"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in results:
            gain = None if r.after is None or r.before is None else round(r.after - r.before, 6)
            w.writerow({"condition": r.condition, "seed": r.seed, "iterations": r.iterations,
                        "before": r.before, "after": r.after, "gain": gain,
                        "after_sampled": r.after_sampled, "after_strict": r.after_strict,
                        "final_score": r.final_score, "wall_s": round(r.wall_s, 1),
                        "run_dir": r.run_dir, "command": r.command})


def markdown_table(rows: list[dict[str, Any]], seed_note: str = "") -> str:
    """The per-condition table (accuracies in %, mean ± std [95 % interval])."""
    lines = [
        "| condition | seeds | iterations | held-out acc. before (%) | after (%) | gain "
        "(points) | after, sampled (%) | after, strict (%) | rollout score, last 5 its (%) "
        "| wall s / seed |",
        "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['condition']} | {len(r['seeds'])} | {r['iterations']} | "
                     f"{_fmt(r['before'])} | {_fmt(r['after'])} | {_fmt(r['gain'])} | "
                     f"{_fmt(r.get('after_sampled', _NONE))} | "
                     f"{_fmt(r.get('after_strict', _NONE))} | "
                     f"{_fmt(r['final_score'])} | {r['wall_s']:.0f} |")
    lines.append("")
    lines.append("Mean ± sample std over seeds [95 % t interval of the mean]; held-out "
                 "accuracy is greedy and lenient (box, answer phrase or last number) unless "
                 "the column says sampled (at the training temperature) or strict (boxed "
                 "answers only). Reproduce a row (seed S):"
                 + (f" {seed_note}" if seed_note else ""))
    lines.append("")
    for r in rows:
        lines.append(f"- {r['condition']}: `{r['command']}`")
    return "\n".join(lines) + "\n"


def plot_curves(results: list[RunResult], order: list[str], path: str | Path,
                smooth: int = 5) -> Path:
    """Rollout score per iteration: per condition the seed mean (moving average over
    `smooth` iterations) with a ± std band over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    for name in order:
        curves = [dict(r.curve) for r in results if r.condition == name and r.curve]
        if not curves:
            continue
        steps = sorted(set.intersection(*(set(c) for c in curves)))
        y = np.array([[c[s] for s in steps] for c in curves])  # [seeds, steps]
        if smooth > 1 and y.shape[1] >= smooth:
            kernel = np.ones(smooth) / smooth
            y = np.array([np.convolve(row, kernel, mode="valid") for row in y])
            steps = steps[smooth - 1:]
        mean, std = y.mean(0), y.std(0)
        (line,) = ax.plot(steps, mean, lw=1.4, label=f"{name} ({len(curves)} seeds)")
        ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    ax.set_xlabel("iteration")
    ax.set_ylabel(f"rollout score (moving average of {smooth})")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
