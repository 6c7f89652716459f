"""The routing bench: an orchestrator learns to call the one worker that can solve a problem.

The JAX-native route task (`marft_jax/envs/route.py`) with the `token_route` team: the
orchestrator sees (kind, target) and calls worker_a or worker_b (or says done) with its
first token; only the kind's specialist is accepted, and it must play the target. A
kind-blind orchestrator solves at most half the problems; chance is 1/3 × 1/4 ≈ 8 %.
Otherwise the token bench's settings (`configs/token_bench.py`): a tiny random decoder at
`initializer_range` 0.3, one-token moves, no advantage normalisation. Seeds vmap
(`configs/studies/route.py`).
"""

from configs.token_bench import get_config as bench_config


def get_config():
    c = bench_config()
    c.team.profiles = "token_route"
    c.task.kind = "route"
    c.train.update(iterations=200, eval_every=25, eval_problems=8)
    return c
