"""Reference dual team (reasoner -> actor) with MARFT-A, in the reference's string layout and
its defaults (horizon 3, T=0.5, top-k 50, 256 new tokens, lr 5e-7 / 5e-4), on MATH.

The reference ran this on Qwen2.5-Instruct on a GPU; pass --config.model.name=<HF dir> to use
such a model. On SmolLM2 and a CPU it is slow (long observations): see configs/default.py for
the CPU main job.
"""

from marft_jax.training.config import base_config


def get_config():
    c = base_config()
    c.team.update(profiles="math_dual", layout="reference")
    c.task.update(kind="dataset", dataset="math", train_split="train", eval_split="test",
                  train_problems=7500, heldout_problems=500)
    c.rollout.update(num_envs=8, num_rounds=1, horizon=3, obs_tokens=0)
    c.sampling.update(max_new_tokens=256, temperature=0.5, top_k=50)
    c.ppo.update(algorithm="marft_a", logprob_norm="sum")
    c.train.update(iterations=1000, eval_every=50, eval_problems=500, checkpoint_every=25)
    return c
