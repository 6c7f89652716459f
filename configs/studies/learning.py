"""The algorithm comparison on the default task (issue: does MARFT make the team better?).

Every trained row uses `configs/default.py` as it stands (since session 5: T 0.3, 16
episodes an iteration, batch-normalised advantages, no entropy bonus; ~30 min a seed on a
2-core CPU). The session-4 table in BUILD_NOTES.md ran the same rows with the earlier
defaults (`BEFORE` in `configs/studies/levers.py`). The recorded rows ran with whole rows;
since session 10 `configs/default.py` computes the system prompts once
(`rollout.shared_prefix`, `ppo.shared_prefix`: equal up to float rounding;
`configs/studies/throughput.py` reran MARFT-A with them).

SmolLM2-135M-Instruct, generated 2-digit addition word problems, 200 held-out problems
(the same for every seed: `task.split_seed`); every condition is `configs/default.py` with
the overrides below. The untrained teams are evaluated greedily with adapters whose B = 0,
so no seed changes them: they run once, greedy and sampled at the training temperature,
and each trained row is scored against its untrained team (column "before").

  python experiments/repro_study.py --study=configs/studies/learning.py --seeds=0,1,2
"""

from marft_jax.training.study import Comparison, Condition

DEFAULT = "configs/default.py"
# Untrained teams are the same for every seed (adapters with B = 0): they run once, and the
# trained rows are scored against them instead of evaluating themselves first.
UNTRAINED = {"train.iterations": 0, "train.eval_before": True}
TRAINED = {"train.eval_before": False}
SINGLE = {"team.profiles": "math_single"}
INDEPENDENT = {"ppo.algorithm": "ippo", "team.independent": True}


def get_study():
    trained = lambda name, overrides, base: Condition(name, DEFAULT, dict(TRAINED, **overrides),
                                                      baseline=base)
    return [
        Condition("untrained_single", DEFAULT, dict(SINGLE, **UNTRAINED), seeds=(0,)),
        Condition("untrained_dual", DEFAULT, UNTRAINED, seeds=(0,)),
        # IPPO's actor does not see the reasoner: a different untrained team.
        Condition("untrained_independent", DEFAULT, dict(INDEPENDENT, **UNTRAINED),
                  seeds=(0,)),
        trained("marft_a_dual", {}, "untrained_dual"),
        trained("marft_t_dual", {"ppo.algorithm": "marft_t"}, "untrained_dual"),
        trained("ippo_dual", INDEPENDENT, "untrained_independent"),
        trained("grpo_dual", {"ppo.algorithm": "grpo", "ppo.group_size": 4}, "untrained_dual"),
        trained("ppo_single", SINGLE, "untrained_single"),
    ]


def get_comparisons():
    return [
        Comparison("marft_a_dual", "ppo_single",
                   "does the trained team beat the trained single agent?"),
        Comparison("marft_a_dual", "ippo_dual",
                   "MARFT-A vs IPPO (and which is more stable across seeds)"),
        Comparison("marft_a_dual", "marft_t_dual", "action- vs token-level credit"),
        Comparison("marft_a_dual", "grpo_dual", "a learned critic vs group baselines"),
    ]
