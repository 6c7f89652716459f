"""The algorithm comparison on the default task (issue: does MARFT make the team better?).

Every trained row uses `configs/default.py` as it stands (since session 5: T 0.3, 16
episodes an iteration, batch-normalised advantages, no entropy bonus; ~30 min a seed on a
2-core CPU). The session-4 table in BUILD_NOTES.md ran the same rows with the earlier
defaults (`BEFORE` in `configs/studies/levers.py`).

SmolLM2-135M-Instruct, generated 2-digit addition word problems, 200 held-out problems
(the same for every seed: `task.split_seed`); every condition is `configs/default.py` with
the overrides below. The untrained teams are evaluated greedily with adapters whose B = 0,
so no seed changes them: they run once.

  python experiments/repro_study.py --study=configs/studies/learning.py --seeds=0,1,2
"""

from marft_jax.training.study import Condition

DEFAULT = "configs/default.py"


def get_study():
    return [
        Condition("untrained_single", DEFAULT, {"team.profiles": "math_single",
                                                "train.iterations": 0}, seeds=(0,)),
        Condition("untrained_dual", DEFAULT, {"train.iterations": 0}, seeds=(0,)),
        Condition("marft_a_dual", DEFAULT, {}),
        Condition("marft_t_dual", DEFAULT, {"ppo.algorithm": "marft_t"}),
        Condition("ippo_dual", DEFAULT, {"ppo.algorithm": "ippo", "team.independent": True}),
        Condition("grpo_dual", DEFAULT, {"ppo.algorithm": "grpo", "ppo.group_size": 4}),
        Condition("ppo_single", DEFAULT, {"team.profiles": "math_single"}),
    ]
