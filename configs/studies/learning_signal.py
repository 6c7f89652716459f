"""More learning signal per iteration for MARFT-A on the default task (issue 7, follow-up).

`configs/studies/learning.py` trains at temperature 0.7 with 8 episodes an iteration; its
rollouts succeed 2.5-15 % of the time, about half a success an iteration (BUILD_NOTES.md,
"Learning study"). These conditions change only how much signal an iteration carries:
sampling at 0.3 (the untrained team's sampled accuracy roughly doubles, 5.0 -> 8.75 % on
80 held-out problems) and 16 episodes an iteration (twice the rollout cost), optionally with
a KL penalty to the base policy against drift. Same 200 held-out problems, same
evaluation (greedy), so the rows compare with `learning.py`'s.

  python experiments/repro_study.py --study=configs/studies/learning_signal.py \\
      --seeds=0 --only=marft_a_t03_env16 --out=runs/study_learning_signal
"""

from marft_jax.training.study import Condition

DEFAULT = "configs/default.py"
SIGNAL = {"sampling.temperature": 0.3, "rollout.num_envs": 16}


def get_study():
    return [
        Condition("marft_a_t03_env16", DEFAULT, dict(SIGNAL)),
        Condition("marft_a_t03_env16_kl", DEFAULT, dict(SIGNAL, **{"ppo.kl_coef": 0.05})),
    ]
