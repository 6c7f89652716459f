"""What makes MARFT-A's updates carry signal on the default task: one lever at a time.

SmolLM2-135M-Instruct, the reference dual team, generated 2-digit additions, the same 200
held-out problems for every run (`task.split_seed`). Every condition starts from
`configs/default.py` as it stood before this search (T 0.7, 8 episodes an iteration, four
minibatches of 2 envs with the advantages normalised per minibatch, entropy bonus 0.01,
20 iterations); the untrained team and those settings are the rows of
`configs/studies/learning.py`. The evaluation before training is the same for every run
(adapters with B = 0), so it is skipped here (`train.eval_before`); each run is scored after
training greedily and sampled at its training temperature, strict (`\\boxed{}` only) and
lenient (box, answer phrase or last number: the training reward).

  python experiments/repro_study.py --study=configs/studies/levers.py --seeds=0 \\
      --only=<condition> --out=runs/study_levers

The table of what each lever did is in BUILD_NOTES.md ("SmolLM2 learning levers").
"""

from marft_jax.training.study import Condition

DEFAULT = "configs/default.py"
EVAL = {"train.eval_before": False, "train.eval_sampled": True}
# More signal an iteration: colder sampling, twice the episodes (2 minibatches of 8 envs),
# advantages normalised over the whole batch, no entropy bonus.
SIGNAL = dict(EVAL, **{"sampling.temperature": 0.3, "rollout.num_envs": 16,
                       "ppo.num_minibatches": 2, "ppo.advantage_norm": "batch",
                       "ppo.entropy_coef": 0.0})


def get_study():
    return [
        Condition("default", DEFAULT, dict(EVAL)),
        Condition("signal", DEFAULT, dict(SIGNAL)),
        Condition("signal_nonorm", DEFAULT, dict(SIGNAL, **{"ppo.advantage_norm": "none"})),
    ]
