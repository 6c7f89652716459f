"""Run directories: the resolved config, software versions, metrics (JSONL + TensorBoard)."""

from __future__ import annotations

import json
import os
import platform
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "chex", "transformers",
            "numpy")


def environment_info() -> dict[str, Any]:
    """Versions of the stack and the devices this process sees."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    devices = jax.devices()
    return {"versions": versions, "python": platform.python_version(),
            "device_kind": devices[0].device_kind, "platform": devices[0].platform,
            "device_count": len(devices), "process_count": jax.process_count(),
            "hostname": platform.node()}


def config_to_json(config: ml_collections.ConfigDict) -> str:
    """The resolved config as stable, indented JSON."""
    return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=list)


def prepare_run_dir(config: ml_collections.ConfigDict, path: str | Path,
                    resume: bool) -> Path:
    """Creates (or, with `resume`, reuses) a run directory and records the config.

    A fresh run refuses a directory that already holds a run; a resumed run refuses a
    config that differs from the stored one in anything but `train.iterations` and the
    device `mesh` (checkpoints restore onto any mesh).
    """
    from marft_jax.errors import ConfigError

    path = Path(path)
    stored = path / "config.json"
    text = config_to_json(config)
    if stored.exists():
        if not resume:
            raise ConfigError(f"{path}: already holds a run; pass --resume to continue it or "
                              "choose another --config.train.run_name")
        old, new = json.loads(stored.read_text()), json.loads(text)
        for tree in (old, new):
            tree["train"].pop("iterations", None)
            tree.pop("mesh", None)
        if old != new:
            changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise ConfigError(f"{stored}: the stored config differs from this one in "
                              f"{changed}; a resumed run must use the same config")
    path.mkdir(parents=True, exist_ok=True)
    _atomic_write(stored, text)
    _atomic_write(path / "environment.json", json.dumps(environment_info(), indent=2))
    return path


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _scalar(value) -> float | int | None:
    arr = np.asarray(value)
    if arr.size != 1:
        return None
    item = arr.reshape(()).item()
    return item if isinstance(item, (int, float)) else float(item)


def flatten_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Nested metrics (arrays allowed) -> flat `{"a/b": scalar}`; vectors get `/i` suffixes."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_metrics(value, name + "/"))
            continue
        arr = np.asarray(value)
        if arr.size == 1:
            flat[name] = _scalar(arr)
        else:
            for i, v in enumerate(arr.reshape(-1).tolist()):
                flat[f"{name}/{i}"] = v
    return flat


class MetricsWriter:
    """Appends one JSON line per record to `metrics.jsonl` and mirrors it to TensorBoard.

    On resume, lines at or after the resumed step are dropped first, so the file of a
    resumed run equals the file of an uninterrupted one.
    """

    def __init__(self, run_dir: str | Path, resume_step: int | None = None):
        self.path = Path(run_dir) / "metrics.jsonl"
        if resume_step is not None and self.path.exists():
            kept = [line for line in self.path.read_text().splitlines()
                    if line and json.loads(line)["step"] < resume_step]
            _atomic_write(self.path, "".join(line + "\n" for line in kept))
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        from tensorboardX import SummaryWriter

        self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def write(self, step: int, metrics: dict[str, Any], wall_time: float | None = None) -> None:
        flat = flatten_metrics(metrics)
        record = {"step": int(step), **flat}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        for name, value in flat.items():
            if value is not None:
                self._tb.add_scalar(name.replace("@", "_at_"), value, global_step=int(step),
                                    walltime=wall_time or time.time())
        self._tb.flush()

    def close(self) -> None:
        self._tb.close()


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """All records of `metrics.jsonl`, in order."""
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line]
