"""Learning-curve plots from a run's metrics.jsonl."""

from __future__ import annotations

from pathlib import Path

from marft_jax.training.run_dir import read_metrics


def plot_learning_curve(run_dir: str | Path) -> Path:
    """Writes `learning_curve.png`: rollout score per iteration and held-out accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    train = [(r["step"], r["rollout/score"]) for r in records if "rollout/score" in r]
    evals = [(r["step"], r["eval/accuracy"]) for r in records if "eval/accuracy" in r]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    if train:
        ax.plot(*zip(*train), label="rollout score (train problems)", lw=1.2)
    if evals:
        ax.plot(*zip(*evals), "o-", label="held-out accuracy", lw=1.5)
    ax.set_xlabel("iteration")
    ax.set_ylabel("score / accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    ax.set_title(run_dir.name, fontsize=9)
    fig.tight_layout()
    out = run_dir / "learning_curve.png"
    fig.savefig(out)
    plt.close(fig)
    return out
