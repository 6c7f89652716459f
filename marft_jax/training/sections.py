"""Typed, frozen forms of the config sections `task`, `rollout`, `sampling` and `train`.

Each dataclass's defaults are the schema's (`training.config.base_config` builds those
sections from them), and `from_section` builds one from a checked ConfigDict section: a
field missing from a config saved before it existed takes its default. The checks
themselves run in `training.config.finalize` (`FIELD_RULES` and the choice checks); these
classes only hold the result, so code reads `exp.train.iterations`, never the ConfigDict.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    """The `task` section: the fields of every task kind (each kind reads its own).

    Attributes:
        kind: a registered task (`envs.registry.task_names()`).
        digits, terms, ops, templates: arithmetic word problems (kind "arithmetic").
        train_problems, heldout_problems: sizes of the train and held-out sets.
        split_seed: draws the problem sets; fixed across run seeds, so they compare.
        dataset, train_split, eval_split: a shared dataset (kind "dataset"); for kind
            "code" `dataset` is "builtin", "humaneval" or a HumanEval-format .jsonl.
        num_symbols: the JAX-native token task (kind "tokens").
        grader: how math answers are graded: "builtin" (envs/math/grader.py) or
            "math_verify" (HF's math-verify, in the same hard-timeout worker).
        code_workers, code_timeout_s, code_memory_mb: code tasks: candidates graded at
            once, wall-clock limit and memory (MiB) of each.
    """

    kind: str = "arithmetic"
    digits: int = 2
    terms: int = 2
    ops: tuple[str, ...] = ("+",)
    templates: str = "mixed"
    train_problems: int = 2000
    heldout_problems: int = 200
    split_seed: int = 0
    dataset: str = "gsm8k"
    train_split: str = "train"
    eval_split: str = "test"
    num_symbols: int = 8
    grader: str = "builtin"
    code_workers: int = 2
    code_timeout_s: float = 5.0
    code_memory_mb: int = 1024


@dataclasses.dataclass(frozen=True)
class RolloutSettings:
    """The `rollout` section, as configured (`RunSetup.rollout_config` is the resolved
    `flexmg.rollout.RolloutConfig` a rollout runs with).

    Attributes:
        num_envs: environments played at once (E).
        num_rounds: rounds collected per iteration (R).
        horizon: rounds per episode before it is cut.
        reward_placement: `flexmg.rollout.PLACEMENTS`.
        obs_tokens: observation width; 0 = derive the longest possible (`build_setup`).
        cross_tokens: a heterogeneous team's width of a response carried into another
            base's tokens (longer texts are cut, with a warning); 0 = twice
            `sampling.max_new_tokens`.
        shared_prefix: prefill each agent's prefix (system prompt) once per wave and
            broadcast it to the envs (`flexmg.rollout.RolloutConfig.shared_prefix`).
    """

    num_envs: int = 8
    num_rounds: int = 1
    horizon: int = 3
    reward_placement: str = "last"
    obs_tokens: int = 0
    cross_tokens: int = 0
    shared_prefix: bool = False


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """The `sampling` section: how the team samples during training rollouts.

    Attributes:
        max_new_tokens: response width (an agent's own limit may be lower).
        temperature: the training rollouts' temperature (and sampled evaluation's).
        top_k: 0 = off.
        top_p: nucleus mass in (0, 1].
        decode_chunk: the sampler's decode phases (`sampling.SamplerConfig.decode_chunk`):
            0 = every step attends over the whole KV cache; c > 0 = phases of c tokens
            that attend over the filled cache chunks only.
        merge_adapter: decode a wave whose rows all run one adapter (a wave of one agent)
            on the weights with that adapter merged in (`sampling.SamplerConfig.
            merge_adapter`); the same tokens up to float rounding.
        dtype: what the rollouts' and evaluations' forward passes (prefill and decode)
            compute in: "" = the model's `model.dtype`, or "bfloat16" / "float32"
            (`sampling.SamplerConfig.prefill_dtype` / `decode_dtype`); the update keeps
            `model.dtype`. bfloat16 sampling of a float32 model is faster where bf16
            matmuls are (AMX CPUs, GPUs, TPUs), but PPO's old log-probs then come from
            the bf16 policy: `ppo.recompute_old_logprobs` recomputes them in float32.
    """

    max_new_tokens: int = 256
    temperature: float = 0.5
    top_k: int = 50
    top_p: float = 1.0
    decode_chunk: int = 0
    merge_adapter: bool = True
    dtype: str = ""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The `train` section: the loop, its evaluations, checkpoints and rollbacks.

    Attributes:
        iterations: 0 = evaluate the untrained team only (a study's baselines).
        eval_every: evaluate every this many iterations (0 = before and after only).
        eval_problems: held-out problems per evaluation (0 = no evaluation).
        eval_greedy: evaluate greedily (else sampled at `sampling.temperature`).
        eval_samples: samples per problem (pass@k).
        eval_sampled: also evaluate sampled at `sampling.temperature` (pass@k).
        eval_before: evaluate the untrained team first (a study's baseline row can).
        eval_batch: problems per evaluation call; 0 = `rollout.num_envs`.
        checkpoint_every, keep_checkpoints: checkpoint cadence and how many to keep.
        output_dir, run_name: where the run directory is.
        log_every: console log cadence.
        rollback_after: after this many consecutive iterations with a skipped non-finite
            step (or a non-finite state), restore the last good checkpoint, fold a fresh
            key and continue (0 = never).
        max_rollbacks: give up after this many rollbacks.
        memory_budget_gb: the memory (GB, 1e9 bytes) the update's micro-batches are sized
            to when `ppo.grad_accum_steps` is 0 (`algorithms.memory`); 0 = half the
            machine's memory.
        release_host_memory: return the host heap's free pages to the OS before each
            phase of an iteration (`hostmem.release_free_memory`; glibc's
            `malloc_trim`): on the CPU backend a phase's freed buffers otherwise stay in
            the process and the next phase's peak comes on top. No effect on results.
    """

    iterations: int = 10
    eval_every: int = 0
    eval_problems: int = 200
    eval_greedy: bool = True
    eval_samples: int = 1
    eval_sampled: bool = False
    eval_before: bool = True
    eval_batch: int = 0
    checkpoint_every: int = 1
    keep_checkpoints: int = 3
    output_dir: str = "runs"
    run_name: str = ""
    log_every: int = 1
    rollback_after: int = 3
    max_rollbacks: int = 3
    memory_budget_gb: float = 0.0
    release_host_memory: bool = True


def defaults(cls: type) -> dict[str, Any]:
    """The default of every field of a section class (the schema's section)."""
    return dataclasses.asdict(cls())


def from_section(cls: type[T], section: Any) -> T:
    """A `cls` from a (checked) config section; fields it lacks take their defaults.

    Sequences become tuples, so the result is hashable and frozen all the way down.
    """
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: (tuple(v) if isinstance(v, (list, tuple)) else v)
              for k, v in dict(section).items() if k in names}
    return cls(**values)
