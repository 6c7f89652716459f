"""Run directories: the resolved config, software versions, metrics (JSONL + TensorBoard)."""

from __future__ import annotations

import json
import math
import os
import platform
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from marft_jax.training import faults

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


def saved_checkpoint_steps(path: str | Path) -> list[int]:
    """Steps of the checkpoint directories in `<path>/checkpoints`, ascending, read from
    the directory names only (no checkpointer is opened, nothing is created)."""
    where = Path(path) / "checkpoints"
    if not where.is_dir():
        return []
    return sorted(int(p.name) for p in where.iterdir() if p.is_dir() and p.name.isdigit())


def config_differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """`"field: stored X, given Y"` for every leaf where two config trees differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += config_differences(old.get(key, "<absent>"), new.get(key, "<absent>"),
                                      f"{prefix}{key}.")
        return out
    if old == new:
        return []
    return [f"{prefix.rstrip('.')}: stored {json.dumps(old)}, given {json.dumps(new)}"]


def _base_config() -> ml_collections.ConfigDict:
    from marft_jax.training.config import base_config

    return base_config()


def _with_defaults(stored: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """`stored` with the fields it lacks (added to the schema since it was written) set to
    their defaults, so a run from before a new field resumes when the field is left so."""
    out = dict(stored)
    for key, value in defaults.items():
        if key not in out:
            out[key] = value
        elif isinstance(value, dict) and isinstance(out[key], dict):
            out[key] = _with_defaults(out[key], value)
    return out


def prepare_run_dir(config: ml_collections.ConfigDict, path: str | Path,
                    resume: bool) -> Path:
    """Creates (or, with `resume`, reuses) a run directory and records the config.

    A fresh run refuses a directory that already holds a run, or checkpoints without a
    config (a run's leftovers: a new run there would mix its config with the old
    adapters). A resumed run refuses a config that differs from the stored one in anything
    but `train.iterations` and the device `mesh` (checkpoints restore onto any mesh),
    naming every differing field with both values, and fewer iterations than its latest
    checkpoint has done.
    """
    from marft_jax.errors import ConfigError

    path = Path(path)
    stored = path / "config.json"
    text = config_to_json(config)
    steps = saved_checkpoint_steps(path)
    if stored.exists():
        if not resume:
            raise ConfigError(f"{path}: already holds a run; pass --resume to continue it or "
                              "choose another --config.train.run_name")
        old, new = json.loads(stored.read_text()), json.loads(text)
        old = _with_defaults(old, json.loads(config_to_json(_base_config())))
        for tree in (old, new):
            tree["train"].pop("iterations", None)
            tree.pop("mesh", None)
        changed = config_differences(old, new)
        if changed:
            raise ConfigError(f"{stored}: a resumed run must use the same config; it differs "
                              f"in {'; '.join(changed)}")
        if steps and config.train.iterations < steps[-1]:
            raise ConfigError(f"config field 'train.iterations': {config.train.iterations} is "
                              f"fewer than the {steps[-1]} iterations {path} has done (its "
                              f"latest checkpoint); pass at least {steps[-1]}")
    elif steps:
        raise ConfigError(f"{path}: holds checkpoints (steps {steps}) but no config.json, the "
                          "leftovers of another run; a new run there would mix its config "
                          "with those adapters. Remove the directory or choose another one")
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


def _finite_or_none(value):
    """A float that JSON can hold: NaN and ±inf become None (standard JSON has neither)."""
    return value if not isinstance(value, float) or math.isfinite(value) else None


def json_safe(tree: Any) -> Any:
    """A nested dict / list of numbers with NaN and ±inf replaced by None (numpy scalars
    become Python numbers), for `json.dumps(..., allow_nan=False)`."""
    if isinstance(tree, dict):
        return {k: json_safe(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [json_safe(v) for v in tree]
    if isinstance(tree, (np.generic, np.ndarray)) and np.asarray(tree).size == 1:
        tree = np.asarray(tree).item()
    return _finite_or_none(tree)


def _resumed_rows(lines: list[str], resume_step: int) -> list[str]:
    """The lines of `metrics.jsonl` an uninterrupted run has before `resume_step`.

    Kept: rows of steps below `resume_step`, except an evaluation-only row at a step > 0
    (a final evaluation: it is redone, or superseded when the run is extended). A line
    that does not parse (torn by a kill while it was written) is dropped: a kill can
    only tear a row written after the latest checkpoint.
    """
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
            step = int(record["step"])
        except (ValueError, KeyError, TypeError):
            continue
        eval_only = all(k == "step" or k.startswith("eval/") for k in record)
        if step < resume_step and not (eval_only and step > 0):
            kept.append(line)
    return kept


class MetricsWriter:
    """Appends one JSON line per record to `metrics.jsonl` and mirrors it to TensorBoard.

    Lines are standard JSON: a NaN or infinite value is written as null (and not sent to
    TensorBoard). On resume, the rows an uninterrupted run would not yet have are dropped
    first (`_resumed_rows`) and TensorBoard events from `resume_step` on are purged, so the
    files of a resumed run equal those of an uninterrupted one.
    """

    def __init__(self, run_dir: str | Path, resume_step: int | None = None):
        self.path = Path(run_dir) / "metrics.jsonl"
        if resume_step is not None and self.path.exists():
            kept = _resumed_rows(self.path.read_text().splitlines(), resume_step)
            _atomic_write(self.path, "".join(line + "\n" for line in kept))
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        self._tb_dir = str(Path(run_dir) / "tensorboard")
        self._tb = self._open_tensorboard(resume_step)

    def _open_tensorboard(self, purge_step: int | None):
        from tensorboardX import SummaryWriter

        return SummaryWriter(self._tb_dir, purge_step=purge_step)

    def rewind(self, step: int) -> None:
        """Drops the rows from `step` on (a rollback), in the file and in TensorBoard."""
        kept = _resumed_rows(self.path.read_text().splitlines(), step)
        _atomic_write(self.path, "".join(line + "\n" for line in kept))
        self._tb.close()
        self._tb = self._open_tensorboard(step)

    def write(self, step: int, metrics: dict[str, Any], wall_time: float | None = None) -> None:
        flat = {k: _finite_or_none(v) for k, v in flatten_metrics(metrics).items()}
        record = {"step": int(step), **flat}
        line = json.dumps(record, allow_nan=False) + "\n"
        with self.path.open("a") as f:
            if faults.kill_armed("metrics_row", int(step)):  # tests: a torn last line
                f.write(line[:len(line) // 2])
                f.flush()
                faults.kill()
            f.write(line)
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
