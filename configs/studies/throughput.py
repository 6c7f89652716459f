"""Does the main job still learn with the update's and the sampler's shared prefixes on?

`rollout.shared_prefix` and `ppo.shared_prefix` compute each agent's system prompt once
per wave / scoring call instead of once per env: the same results up to float rounding
(tested), ~1.3-1.4x the episodes per CPU-minute of `configs/default.py` (BUILD_NOTES.md,
"Throughput"). Float-level differences change which tokens a sampled rollout draws after
a few iterations, so a seed's run is a different run; this study checks the outcome over
seeds against the recorded MARFT-A rows of `configs/studies/learning.py` (held-out greedy
45.8 ± 5.0 over seeds 0-2, untrained dual team 19.5), on the same 200 held-out problems.
Result (BUILD_NOTES.md, session 10): 46.5, 50.5, 40.5 % greedy: seed by seed the
recorded whole-row runs' numbers.

  python experiments/repro_study.py --study=configs/studies/throughput.py --seeds=0,1,2 \\
      --out=runs/study_throughput
"""

from marft_jax.training.study import Condition

DEFAULT = "configs/default.py"
SHARED = {"rollout.shared_prefix": True, "ppo.shared_prefix": True}


def get_study():
    untrained = dict(SHARED, **{"train.iterations": 0, "train.eval_before": True})
    trained = dict(SHARED, **{"train.eval_before": False})
    return [
        # Greedy evaluation is seed-free: with the sampler's shared prefix it should give
        # the whole-prompt evaluation's 19.5 % (float rounding may flip a rare argmax).
        Condition("untrained_shared_prefix", DEFAULT, untrained, seeds=(0,)),
        Condition("marft_a_shared_prefix", DEFAULT, trained,
                  baseline="untrained_shared_prefix"),
    ]
