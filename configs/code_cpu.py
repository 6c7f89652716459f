"""Code on a CPU: the coder -> reviewer team (code_dual.json) on SmolLM2-135M-Instruct,
MARFT-A on the 30 built-in list and string problems (22 to train, 8 held out).

A smoke-sized run: 8 envs, 192-token responses, 10 iterations; every round's programs are
run against their tests in sandboxed child processes, 2 at a time (a few dozen candidates a
second on 2 cores, BUILD_NOTES.md "Code tasks"). Training reward: the fraction of tests
passed; held-out accuracy and pass@k: all tests pass.
"""

from marft_jax.training.config import base_config


def get_config():
    c = base_config()
    c.model.name = "smollm2-135m-instruct"
    c.team.update(profiles="code_dual", layout="chat")
    c.task.update(kind="code", dataset="builtin", train_problems=22, heldout_problems=8,
                  split_seed=0, code_workers=2, code_timeout_s=5.0, code_memory_mb=1024)
    c.rollout.update(num_envs=8, num_rounds=1, horizon=1, obs_tokens=0)
    c.sampling.update(max_new_tokens=192, temperature=0.3, top_k=50)
    c.ppo.update(algorithm="marft_a", lr_actor=5e-4, lr_critic=1e-3, epochs=1,
                 num_minibatches=2, advantage_norm="batch", entropy_coef=0.0,
                 logprob_norm="sum", critic_trunk="shared")
    c.train.update(iterations=10, eval_every=0, eval_problems=8, eval_batch=8,
                   eval_sampled=True, eval_samples=8, checkpoint_every=5, output_dir="runs")
    return c
