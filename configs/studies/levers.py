"""What makes MARFT-A's updates carry signal on the default task: one lever at a time.

SmolLM2-135M-Instruct, the reference dual team, generated 2-digit additions, the same 200
held-out problems for every run (`task.split_seed`). `configs/default.py` now holds the
settings this search found ("signal" below); `BEFORE` restores the earlier main job (T 0.7,
8 episodes an iteration, four minibatches of 2 envs with the advantages normalised per
minibatch, entropy bonus 0.01), whose 3 seeds are the `marft_a_dual` row of BUILD_NOTES.md's
session-4 study. The evaluation before training is the same for every run (adapters with
B = 0), so it is skipped here (`train.eval_before`); each run is scored after training
greedily and sampled at its training temperature, strict (`\\boxed{}` only) and lenient
(box, answer phrase or last number: the training reward).

  python experiments/repro_study.py --study=configs/studies/levers.py --seeds=0 \\
      --only=<condition> --out=runs/study_levers

The table of what each lever did is in BUILD_NOTES.md ("SmolLM2 learning levers").
"""

from marft_jax.training.study import Condition

DEFAULT = "configs/default.py"
EVAL = {"train.eval_before": False, "train.eval_sampled": True}
BEFORE = dict(EVAL, **{"sampling.temperature": 0.7, "rollout.num_envs": 8,
                       "ppo.num_minibatches": 4, "ppo.advantage_norm": "minibatch",
                       "ppo.entropy_coef": 0.01})
# More signal an iteration: colder sampling, twice the episodes (2 minibatches of 8 envs),
# advantages normalised over the whole batch, no entropy bonus (the new default).
SIGNAL = dict(EVAL, **{"sampling.temperature": 0.3, "rollout.num_envs": 16,
                       "ppo.num_minibatches": 2, "ppo.advantage_norm": "batch",
                       "ppo.entropy_coef": 0.0})


def get_study():
    untrained = {"train.iterations": 0, "train.eval_before": True}
    lever = lambda name, overrides, base="untrained": Condition(name, DEFAULT, overrides,
                                                                baseline=base)
    return [
        # The untrained team at each sampling temperature (greedy is the same for both).
        Condition("untrained", DEFAULT, dict(SIGNAL, **untrained), seeds=(0,)),
        Condition("untrained_t07", DEFAULT, dict(BEFORE, **untrained), seeds=(0,)),
        lever("before", dict(BEFORE), "untrained_t07"),
        lever("signal", dict(SIGNAL)),
        lever("signal_nonorm", dict(SIGNAL, **{"ppo.advantage_norm": "none"})),
        lever("signal_t07", dict(SIGNAL, **{"sampling.temperature": 0.7})),
        lever("signal_env8", dict(SIGNAL, **{"rollout.num_envs": 8, "ppo.num_minibatches": 1})),
        # MARFT-T at MARFT-A's learning rate barely moves (approx-KL ~2e-5 an iteration
        # against MARFT-A's 1e-3 - 1e-2): the token-level update with 5x the actor's rate.
        lever("marft_t_lr5x", dict(SIGNAL, **{"ppo.algorithm": "marft_t",
                                              "ppo.lr_actor": 2.5e-3})),
    ]
