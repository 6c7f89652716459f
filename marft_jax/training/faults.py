"""Faults on purpose, for tests: kills at named moments and non-finite updates.

Kill points: with the environment variable `MARFT_JAX_KILL_AT=<point>[:<step>]` the process
SIGKILLs itself when it reaches `<point>` (at `<step>`, or the first time without one), so a
test can interrupt a run at a chosen moment without racing a timer:

  compile      an iteration is about to run its rollout (the first one compiles it)
  update       an iteration's rollout and update are done, nothing of it is written yet
  metrics_row  half of an iteration's metrics.jsonl line is written (a torn line)
  checkpoint   an iteration's checkpoint save has just started (asynchronously)
  final_eval   the final evaluation's row is written, summary.json is not

Injected non-finite values (config section `faults`): `kind` "nan_loss" / "inf_grad" adds
NaN to agent `agent`'s policy loss / +inf to its adapter's gradient in the updates of
iterations `iteration` .. `iteration + count - 1`; "nan_critic" replaces the critic's
weights by NaN before the update of iteration `iteration` (a poisoned critic makes every
later update non-finite). Faults fire on a run's first pass only: after a rollback
(`train.rollback_after`) the iterations are redone cleanly, like a transient fault.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

KILL_ENV = "MARFT_JAX_KILL_AT"
KILL_POINTS = ("compile", "update", "metrics_row", "checkpoint", "final_eval")
FAULT_KINDS = ("none", "nan_loss", "inf_grad", "nan_critic")


def kill_armed(point: str, step: int | None = None) -> bool:
    """Whether `MARFT_JAX_KILL_AT` asks for a kill at `point` (and `step`)."""
    spec = os.environ.get(KILL_ENV, "")
    name, _, at = spec.partition(":")
    return name == point and (not at or step is None or int(at) == step)


def kill_point(point: str, step: int | None = None) -> None:
    """SIGKILLs this process if `MARFT_JAX_KILL_AT` names `point` (and `step`)."""
    if kill_armed(point, step):
        kill()


def kill() -> None:
    """SIGKILL, as `kill -9` would: no cleanup, no flushing, no atexit."""
    os.kill(os.getpid(), signal.SIGKILL)


def fault_settings(config) -> dict[str, Any]:
    """The `faults` section (kind "none" when absent)."""
    return dict(kind="none", iteration=1, agent=0, count=1) | (
        config.faults.to_dict() if "faults" in config else {})


def update_fault(faults: dict[str, Any], adapter_index: tuple[int, ...], step: int,
                 rollbacks: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The `fault` argument of the update of iteration `step` (None: compiled without).

    Runs with a "nan_loss" / "inf_grad" fault pass `(loss_add, grad_add)` `[NA]` every
    iteration (zeros outside the fault), so the update compiles once.
    """
    kind = faults["kind"]
    if kind not in ("nan_loss", "inf_grad"):
        return None
    loss_add = np.zeros(max(adapter_index) + 1, np.float32)
    grad_add = np.zeros_like(loss_add)
    first = faults["iteration"]
    if rollbacks == 0 and first <= step < first + faults["count"]:
        target = loss_add if kind == "nan_loss" else grad_add
        target[adapter_index[faults["agent"]]] = np.nan if kind == "nan_loss" else np.inf
    return loss_add, grad_add


def poison_critic(state, faults: dict[str, Any], step: int, rollbacks: int):
    """The state with a NaN critic at the "nan_critic" fault's iteration, else as is."""
    if faults["kind"] != "nan_critic" or rollbacks or step != faults["iteration"]:
        return state
    return state.replace(critic=jax.tree.map(lambda x: x * jnp.nan, state.critic))


@jax.jit
def _finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)
              if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def state_is_finite(state) -> bool:
    """Whether the adapters and the critic hold only finite values."""
    return bool(_finite((state.lora, state.critic)))
