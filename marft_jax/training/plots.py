"""Learning-curve plots from a run's metrics.jsonl."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from marft_jax.training.run_dir import read_metrics

# (panel title, y label, log scale, [(metrics key pattern, legend label)]); a pattern's
# "(\d+)" group is the agent index.
_PANELS = (
    ("held-out accuracy", "accuracy", False,
     [(r"eval/accuracy", "greedy"), (r"eval/sampled/accuracy", "sampled (pass@1)"),
      (r"eval/accuracy_strict", "greedy, strict (boxed)")]),
    ("per-token entropy", "nats", False, [(r"update/entropy/(\d+)", "agent {}")]),
    ("approx-KL per update", "nats", True, [(r"update/approx_kl/(\d+)", "agent {}")]),
    ("value loss", "loss", True, [(r"update/value_loss", "critic")]),
    ("response length", "tokens", False, [(r"rollout/response_tokens/(\d+)", "agent {}")]),
)


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over up to `window` values (the first points average what there is)."""
    values = np.asarray(values, np.float64)
    sums = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    start = np.maximum(idx - window, 0)
    return (sums[idx] - sums[start]) / (idx - start)


def _series(records: list[dict[str, Any]], pattern: str) -> dict[str, list[tuple[int, float]]]:
    """`{agent index or "": [(step, value)]}` for every key matching `pattern`."""
    regex = re.compile(pattern + "$")
    out: dict[str, list[tuple[int, float]]] = {}
    for r in records:
        for key, value in r.items():
            m = regex.match(key)
            if m and isinstance(value, (int, float)) and np.isfinite(value):
                out.setdefault(m.group(1) if m.groups() else "", []).append((r["step"], value))
    return out


def plot_learning_curve(run_dir: str | Path, window: int = 5) -> Path:
    """Writes `learning_curve.png`: rollout success (and its moving average over `window`
    iterations), held-out accuracy (greedy, sampled, strict), per-agent entropy, approx-KL,
    the value loss and per-agent response length, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    fig, axes = plt.subplots(2, 3, figsize=(12, 6), dpi=110)
    axes = axes.ravel()
    train = _series(records, r"rollout/score").get("", [])
    ax = axes[0]
    if train:
        steps, scores = map(np.asarray, zip(*train))
        ax.plot(steps, scores, lw=0.8, alpha=0.45, label="per iteration")
        ax.plot(steps, moving_average(scores, window), lw=1.6,
                label=f"moving average ({window})")
        ax.legend(fontsize=7, loc="best")
    ax.set_title("rollout success (train problems)", fontsize=9)
    ax.set_ylim(-0.02, 1.02)
    for ax, (title, ylabel, log, series) in zip(axes[1:], _PANELS):
        drawn = False
        for pattern, label in series:
            for agent, points in sorted(_series(records, pattern).items()):
                if not points:
                    continue
                x, y = zip(*points)
                style = "o-" if title.startswith("held-out") else "-"
                ax.plot(x, y, style, lw=1.2, ms=4, label=label.format(agent))
                drawn = True
        ax.set_title(title, fontsize=9)
        ax.set_ylabel(ylabel, fontsize=8)
        if title.startswith("held-out"):
            ax.set_ylim(-0.02, 1.02)
        if drawn:
            ax.legend(fontsize=7, loc="best")
            if log:
                ax.set_yscale("log")
    for ax in axes:
        ax.set_xlabel("iteration", fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    fig.suptitle(run_dir.name, fontsize=10)
    fig.tight_layout()
    out = run_dir / "learning_curve.png"
    fig.savefig(out)
    plt.close(fig)
    return out
