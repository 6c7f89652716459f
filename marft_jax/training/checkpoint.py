"""Orbax checkpoints of a run: adapters, critic, optimizer states, counters, RNG key and
the game state (data cursor included) — never the base weights, only their fingerprint.

A checkpoint from another base model, agent set or LoRA layout is refused with one line.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp

from marft_jax.errors import ConfigError


class CheckpointMismatch(ConfigError):
    """A checkpoint of another base model, team or LoRA layout (no step of the run fits)."""


def _reason(error: BaseException) -> str:
    """The first line of an exception's message (orbax and TensorStore write pages)."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:200]}" if text else \
        type(error).__name__


def base_fingerprint(model_config: dict[str, Any], base) -> str:
    """A short hash of the base model's config and weights.

    Every leaf contributes its path, shape, dtype and a strided sample of at most 65,536
    values, so two different checkpoints of one architecture differ while hashing stays
    cheap for billion-parameter bases.
    """
    h = hashlib.sha256(json.dumps(model_config, sort_keys=True, default=str).encode())
    for path, leaf in jax.tree_util.tree_flatten_with_path(base)[0]:
        arr = np.asarray(leaf)
        flat = arr.reshape(-1)
        sample = flat[::max(1, flat.size // 65536)]
        h.update(f"{jax.tree_util.keystr(path)}|{arr.shape}|{arr.dtype}".encode())
        h.update(np.ascontiguousarray(sample).tobytes())
    return h.hexdigest()[:16]


class RunCheckpointer:
    """Saves and restores `(pytree state, json metadata)` per step in `<run>/checkpoints`."""

    def __init__(self, run_dir: str | Path, keep: int, *, async_save: bool = True):
        self.directory = Path(run_dir).absolute() / "checkpoints"
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        """Starts saving `state` at `step` (asynchronously); `meta` must be JSON-able.

        Raises:
            RuntimeError: orbax skipped the save (it holds this step or a later one), which
                would leave another state on disk than the run's.
        """
        saved = self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))
        if not saved:
            raise RuntimeError(f"{self.directory}: the checkpoint of step {step} was not "
                               f"written (saved steps: {self.steps()})")

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def steps(self) -> list[int]:
        """The saved steps, ascending."""
        return sorted(self.manager.all_steps())

    def restore(self, step: int, abstract_state: Any, expected_meta: dict[str, Any], *,
                partial: bool = False):
        """Restores `(state, meta)` at `step`, refusing an incompatible checkpoint.

        Args:
            abstract_state: a pytree with the target structure (arrays or ShapeDtypeStructs).
            expected_meta: the fields that must match (`base_fingerprint`, `roles`,
                `adapters`, `lora`); a mismatch raises ConfigError naming the field.
            partial: read only the top-level entries of the saved dict that
                `abstract_state` (a dict) names, skipping the others (e.g. the train state
                without the game state, whose shapes depend on the task).

        Raises:
            ConfigError: the metadata does not match, or the stored arrays do not fit
                `abstract_state` (one line naming the checkpoint).
        """
        where = self.directory / str(step)
        meta = self.manager.restore(step, args=ocp.args.Composite(
            meta=ocp.args.JsonRestore()))["meta"]
        for key, expected in expected_meta.items():
            if meta.get(key) != expected:
                raise CheckpointMismatch(f"{where}: checkpoint field '{key}' is {meta.get(key)!r}, "
                                  f"this run has {expected!r}; refusing to resume from it")
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, abstract_state)
        if partial:
            args = ocp.args.PyTreeRestore(
                item=abstract, partial_restore=True,
                restore_args=ocp.checkpoint_utils.construct_restore_args(abstract))
        else:
            args = ocp.args.StandardRestore(abstract)
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(state=args))
        except ValueError as e:  # shape / structure mismatch deep inside orbax
            reason = (str(e).strip() or type(e).__name__).splitlines()[0]
            raise ConfigError(f"{where}: the checkpoint does not fit this run's state "
                              f"({reason})") from None
        return restored["state"], meta

    def restore_newest(self, restore: Callable[[int], Any], steps: list[int] | None = None
                       ) -> tuple[Any, int, list[tuple[int, str]]]:
        """`restore(step)` of the newest step that restores, falling back past broken ones.

        A truncated data file or a missing metadata file makes orbax raise deep inside;
        such a step is skipped for the previous one. A `CheckpointMismatch` (another base
        model, team or LoRA layout) is raised at once: no step of the run would fit.

        Args:
            restore: reads one step (e.g. `lambda step: self.restore(step, ...)`).
            steps: the candidates (default: every saved step).

        Returns:
            `(restore's result, its step, [(newer step, why it failed), ...])`.

        Raises:
            ConfigError: no step restores (naming the newest and why), or a mismatch.
        """
        steps = sorted(self.steps() if steps is None else steps)
        failed: list[tuple[int, str]] = []
        for step in reversed(steps):
            try:
                return restore(step), step, failed
            except CheckpointMismatch:
                raise
            except Exception as e:  # noqa: BLE001 - orbax / TensorStore / OS errors
                failed.append((step, _reason(e)))
        if not failed:
            raise ConfigError(f"{self.directory}: no checkpoint in this run")
        raise ConfigError(f"{self.directory}: no checkpoint restores; step {failed[0][0]}: "
                          f"{failed[0][1]}")

    def set_aside(self, step: int) -> Path:
        """Moves a broken step out of the checkpoint directory (never deletes it), to
        `<run>/corrupt_checkpoints/<step>[.n]`, so later saves of that step can happen."""
        target = self.directory.parent / "corrupt_checkpoints" / str(step)
        n = 0
        while target.exists():
            n += 1
            target = target.with_name(f"{step}.{n}")
        target.parent.mkdir(parents=True, exist_ok=True)
        (self.directory / str(step)).rename(target)
        self.manager.reload()
        return target

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
