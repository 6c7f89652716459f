"""Which optimiser steps of a minibatch apply, and the counters of applied / skipped steps.

The update's guard, in the manner of optax's `apply_if_finite`, but per adapter and with
more reasons to skip: an adapter's step applies when

    scheduled (agent rotation, no critic warm-up) ∧ finite(loss, gradient)
    ∧ approx-KL ≤ target_kl ∧ some nonzero advantage (`skip_no_signal`)

and the critic's when its loss and gradient are finite (and the algorithm has one). A
skipped step keeps the parameters and moments bit for bit (`optim.masked_*_step`).

`StepCounters` is the one record of what happened: the guard returns one step's counts,
`TrainState.counters` holds the run's totals, and the update's metrics report the sums
over one update under the same names.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from marft_jax.algorithms.config import PPOConfig

Array = jax.Array


@struct.dataclass
class StepCounters:
    """Counts of optimiser steps applied and skipped (int32).

    Attributes:
        policy_steps: `[NA]` steps applied to each adapter.
        skipped_nonfinite: `[NA]` adapter steps skipped for a non-finite loss or gradient.
        skipped_kl: `[NA]` adapter steps skipped for approx-KL above `target_kl`.
        skipped_no_signal: `[NA]` adapter steps skipped for a minibatch without a nonzero
            advantage (`skip_no_signal`).
        critic_steps: `[]` steps applied to the critic.
        critic_skipped_nonfinite: `[]` critic steps skipped as non-finite.
    """

    policy_steps: Array
    skipped_nonfinite: Array
    skipped_kl: Array
    skipped_no_signal: Array
    critic_steps: Array
    critic_skipped_nonfinite: Array

    @classmethod
    def zeros(cls, num_adapters: int) -> StepCounters:
        """All-zero counters for `num_adapters` adapters."""
        per_adapter = jnp.zeros((num_adapters,), jnp.int32)
        scalar = jnp.zeros((), jnp.int32)
        return cls(policy_steps=per_adapter, skipped_nonfinite=per_adapter,
                   skipped_kl=per_adapter, skipped_no_signal=per_adapter,
                   critic_steps=scalar, critic_skipped_nonfinite=scalar)

    def __add__(self, other: StepCounters) -> StepCounters:
        return jax.tree.map(jnp.add, self, other)

    def as_dict(self) -> dict[str, Array]:
        """The counters by field name (the names of the update's metrics)."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@struct.dataclass
class Checks:
    """The results of one step's checks, bool (True = passed).

    Attributes:
        finite: `[NA]` the adapter's loss and gradient are finite.
        kl_ok: `[NA]` its approx-KL is at most `target_kl`.
        signal_ok: `[NA]` some decision has a nonzero advantage (or the check is off).
        critic_finite: `[]` the value loss and the critic's gradient are finite.
    """

    finite: Array
    kl_ok: Array
    signal_ok: Array
    critic_finite: Array


def step_checks(config: PPOConfig, loss: Array, grad_norms: Array, approx_kl: Array,
                count: Array, signal: Array, value_loss: Array,
                critic_grad_norm: Array) -> Checks:
    """The guard's checks of one minibatch step.

    Args:
        config: reads `target_kl` (None: no KL check) and `skip_no_signal`.
        loss: `[NA]` the adapter's policy objective summed over its decisions.
        grad_norms: `[NA]` the adapter's global gradient norm.
        approx_kl: `[NA]` summed approx-KL of the adapter's decisions.
        count: `[NA]` the number of decisions (or tokens) summed.
        signal: `[NA]` bool, whether any of its decisions has a nonzero advantage.
        value_loss: `[A]` summed value loss per agent.
        critic_grad_norm: `[]` the critic's global gradient norm.
    """
    finite = jnp.isfinite(grad_norms) & jnp.isfinite(loss)
    kl = approx_kl / jnp.maximum(count, 1.0)
    kl_ok = jnp.ones_like(finite) if config.target_kl is None else ~(kl > config.target_kl)
    # An adapter none of whose decisions carries a nonzero advantage would follow only the
    # entropy bonus / KL term, at Adam's full step size.
    signal_ok = signal if config.skip_no_signal else jnp.ones_like(signal)
    critic_finite = jnp.isfinite(critic_grad_norm) & jnp.all(jnp.isfinite(value_loss))
    return Checks(finite=finite, kl_ok=kl_ok, signal_ok=signal_ok, critic_finite=critic_finite)


def guard_steps(may_step: Array, checks: Checks,
                uses_critic: bool) -> tuple[Array, Array, StepCounters]:
    """`(apply [NA], critic_apply [], counters)` of one minibatch step.

    Args:
        may_step: `[NA]` bool, adapters the schedules let step (rotation, warm-up).
        checks: from `step_checks`.
        uses_critic: whether the algorithm trains a critic at all.

    Returns:
        The adapter mask, the critic's flag, and this step's counts: a skipped step is
        counted under the first check it failed (non-finite, then KL, then no signal).
    """
    finite, kl_ok, signal_ok = checks.finite, checks.kl_ok, checks.signal_ok
    critic_finite = checks.critic_finite
    apply = may_step & finite & kl_ok & signal_ok
    critic_apply = critic_finite & uses_critic
    as_int = lambda x: x.astype(jnp.int32)
    counters = StepCounters(
        policy_steps=as_int(apply),
        skipped_nonfinite=as_int(may_step & ~finite),
        skipped_kl=as_int(may_step & finite & ~kl_ok),
        skipped_no_signal=as_int(may_step & finite & kl_ok & ~signal_ok),
        critic_steps=as_int(critic_apply),
        critic_skipped_nonfinite=as_int(~critic_finite & uses_critic))
    return apply, critic_apply, counters
