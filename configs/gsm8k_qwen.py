"""GSM8K with a real-size model from a local HF directory (the reference's family).

  python experiments/train.py --config=configs/gsm8k_qwen.py \\
      --config.model.name=/path/to/Qwen2.5-1.5B-Instruct

bfloat16 weights; the dual team in the model's chat template; sized for one accelerator.
"""

from marft_jax.training.config import base_config


def get_config():
    c = base_config()
    c.model.update(name="Qwen2.5-1.5B-Instruct", dtype="bfloat16")
    c.team.update(profiles="math_dual", layout="chat")
    c.task.update(kind="dataset", dataset="gsm8k", train_split="train", eval_split="test",
                  train_problems=7473, heldout_problems=1319)
    c.rollout.update(num_envs=32, num_rounds=1, horizon=3, obs_tokens=0)
    c.sampling.update(max_new_tokens=384, temperature=0.7, top_k=50)
    c.ppo.update(algorithm="marft_a", lr_actor=1e-5, lr_critic=5e-4, logprob_norm="token",
                 num_minibatches=4, epochs=2)
    c.train.update(iterations=500, eval_every=25, eval_problems=500, checkpoint_every=25)
    return c
