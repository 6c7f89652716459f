"""Code with a real-size model from a local HF directory: the coder -> reviewer team on
HumanEval (164 problems: 124 to train, 40 held out), on one GPU or TPU.

  python experiments/train.py --config=configs/code_qwen.py \\
      --config.model.name=/path/to/Qwen2.5-Coder-1.5B-Instruct

`model.name` below is a placeholder: set it to the model's directory. bfloat16 weights;
16 sandboxed graders at once (set `task.code_workers` to the host's cores); held-out
pass@1..8 sampled at the training temperature.
"""

from marft_jax.training.config import base_config


def get_config():
    c = base_config()
    c.model.update(name="Qwen2.5-Coder-1.5B-Instruct", dtype="bfloat16")
    c.team.update(profiles="code_dual", layout="chat")
    c.task.update(kind="code", dataset="humaneval", train_problems=124, heldout_problems=40,
                  split_seed=0, code_workers=16, code_timeout_s=10.0, code_memory_mb=2048)
    c.rollout.update(num_envs=32, num_rounds=1, horizon=1, obs_tokens=0)
    c.sampling.update(max_new_tokens=512, temperature=0.7, top_k=50)
    c.ppo.update(algorithm="marft_a", lr_actor=1e-5, lr_critic=5e-4, logprob_norm="token",
                 num_minibatches=4, epochs=2)
    c.train.update(iterations=300, eval_every=25, eval_problems=40, eval_sampled=True,
                   eval_samples=8, checkpoint_every=25)
    return c
