"""Algorithms side by side on the JAX-native token task (tiny random decoder, seconds per
seed): every condition trains all its seeds as one jitted, seed-vmapped program.

  python experiments/repro_study.py --study=configs/studies/tokens.py --seeds=0,1,2,3,4
"""

from marft_jax.training.study import Condition

TINY = "configs/tiny_cpu.py"
LONGER = {"train.iterations": 30}


def get_study():
    return [
        Condition("untrained", TINY, {"train.iterations": 0}),
        Condition("marft_a", TINY, LONGER),
        Condition("marft_t", TINY, {**LONGER, "ppo.algorithm": "marft_t"}),
        Condition("ippo", TINY, {**LONGER, "ppo.algorithm": "ippo", "team.independent": True}),
        Condition("grpo", TINY, {**LONGER, "ppo.algorithm": "grpo", "ppo.group_size": 4}),
    ]
