"""Does the orchestrator learn to route? The routing bench (`configs/route_bench.py`): an
orchestrator calls one of two workers, and only the kind's specialist can solve a problem,
so held-out success above 50 % (4 of the 8 problems) needs routing by kind. Every
condition trains all its seeds as one seed-vmapped program, 200 iterations, evaluated
greedily on all 8 problems every 25.

  python experiments/repro_study.py --study=configs/studies/route.py --seeds=0,1,2,3,4

Rows: the untrained team; MARFT-A (the orchestrator's call is trained like any agent's
action; a worker not called has no decision); GRPO (groups of 4 envs play one problem, no
critic; group statistics over the decisions made). MARFT-T is left out: with one-token
actions it is MARFT-A (a run gave the same results to float rounding).
"""

from marft_jax.training.study import Condition

BENCH = "configs/route_bench.py"


def get_study():
    return [
        Condition("untrained", BENCH, {"train.iterations": 0}),
        Condition("marft_a", BENCH, {}),
        Condition("grpo", BENCH, {"ppo.algorithm": "grpo", "ppo.group_size": 4}),
    ]
