"""Does a bfloat16 rollout still learn? `sampling.dtype` on the JAX-native token bench
(`configs/token_bench.py`, float32 model and update), one change at a time, the same seeds
and held-out targets; every condition trains its seeds as one seed-vmapped program.

  python experiments/repro_study.py --study=configs/studies/sampling_dtype.py --seeds=0,1,2,3,4

Rows: the float32 rollout (the default); the bfloat16 rollout, whose sampled log-probs are
PPO's old log-probs (they differ from the float32 policy's by rounding, so the ratio starts
off 1); the bfloat16 rollout with `ppo.recompute_old_logprobs` (the old log-probs from the
float32 forward before the update, the ratio exact again).
"""

from marft_jax.training.study import Comparison, Condition

BENCH = "configs/token_bench.py"


def get_study():
    return [
        Condition("f32_rollout", BENCH, {}),
        Condition("bf16_rollout", BENCH, {"sampling.dtype": "bfloat16"}),
        Condition("bf16_recompute", BENCH, {"sampling.dtype": "bfloat16",
                                            "ppo.recompute_old_logprobs": True}),
    ]


def get_comparisons():
    return [Comparison("bf16_rollout", "f32_rollout",
                       "does a bfloat16 rollout learn as well as a float32 one?"),
            Comparison("bf16_recompute", "f32_rollout",
                       "and with the old log-probs recomputed in float32?")]
