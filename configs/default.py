"""The main job: the reference dual team (reasoner -> actor, math_dual.json prompts) on
SmolLM2-135M-Instruct, MARFT-A on generated 2-digit addition word problems, on a CPU.

Sized for a 2-core CPU in under 20 minutes (figures in BUILD_NOTES.md): single-round
episodes (horizon 1), 48-token responses, 8 envs and 20 iterations; held-out accuracy on
200 problems before and after, evaluated 40 problems per call.

Tuning (BUILD_NOTES.md, "Main job"): LoRA learning rates far above the reference's 1e-6
are normal for LoRA; at 2e-4 the policy barely moved (approx-KL ~1e-6 per update). With
the per-token-mean sequence log-prob ("token"), 7e-4 and 2e-3 collapsed the actor to 1-2
token answers within 5-15 iterations (the 1/length weight favours short answers); the
reference's summed log-prob ("sum") at 5e-4 with an entropy bonus stays stable. Four
minibatches give four policy steps per iteration at the cost of one.
"""

from marft_jax.training.config import base_config


def get_config():
    c = base_config()
    c.model.name = "smollm2-135m-instruct"
    c.team.profiles = "math_dual"
    c.team.layout = "chat"
    c.task.update(kind="arithmetic", digits=2, terms=2, ops=("+",), train_problems=2000,
                  heldout_problems=200, split_seed=0)
    c.rollout.update(num_envs=8, num_rounds=1, horizon=1, obs_tokens=0)
    c.sampling.update(max_new_tokens=48, temperature=0.7, top_k=50)
    c.ppo.update(algorithm="marft_a", lr_actor=5e-4, lr_critic=1e-3, epochs=1,
                 num_minibatches=4, entropy_coef=0.01, logprob_norm="sum",
                 critic_trunk="shared")
    c.train.update(iterations=20, eval_every=0, eval_problems=200, eval_batch=40,
                   checkpoint_every=10, output_dir="runs")
    return c
