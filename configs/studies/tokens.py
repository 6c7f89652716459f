"""Algorithms side by side on the JAX-native token bench (`configs/token_bench.py`): every
condition trains all its seeds as one jitted, seed-vmapped program, 300 iterations, with
the held-out targets evaluated greedily every 25 iterations.

  python experiments/repro_study.py --study=configs/studies/tokens.py --seeds=0,1,2,3,4

Rows: the untrained pair; MARFT-A and MARFT-T (a shared critic, the second agent sees the
first's move); IPPO (agents do not see each other: the second cannot complete the sum, so
the pair must agree on moves by target alone); GRPO (groups of 4 envs play one target, no
critic); single-agent PPO (one agent must play the target itself).
"""

from marft_jax.training.study import Condition

BENCH = "configs/token_bench.py"


def get_study():
    return [
        Condition("untrained", BENCH, {"train.iterations": 0}),
        Condition("marft_a", BENCH, {}),
        Condition("marft_t", BENCH, {"ppo.algorithm": "marft_t"}),
        Condition("ippo", BENCH, {"ppo.algorithm": "ippo", "team.independent": True}),
        Condition("grpo", BENCH, {"ppo.algorithm": "grpo", "ppo.group_size": 4}),
        Condition("ppo_single", BENCH, {"team.profiles": "token_single"}),
    ]
