"""The main job: the reference dual team (reasoner -> actor, math_dual.json prompts) on
SmolLM2-135M-Instruct, MARFT-A on generated 2-digit addition word problems, on a CPU.

Choices (see BUILD_NOTES.md): single-round episodes (horizon 1) and short responses keep an
iteration within a few seconds on 2 cores; LoRA learning rates far above the reference's
1e-6 are normal for LoRA on a 135M model.
"""

from marft_jax.training.config import base_config


def get_config():
    c = base_config()
    c.model.name = "smollm2-135m-instruct"
    c.team.profiles = "math_dual"
    c.team.layout = "chat"
    c.task.update(kind="arithmetic", digits=2, terms=2, ops=("+",), train_problems=2000,
                  heldout_problems=200)
    c.rollout.update(num_envs=8, num_rounds=1, horizon=1, obs_tokens=0)
    c.sampling.update(max_new_tokens=48, temperature=0.7, top_k=50)
    c.ppo.update(algorithm="marft_a", lr_actor=2e-4, lr_critic=1e-3, epochs=1,
                 num_minibatches=1, entropy_coef=0.0, logprob_norm="token",
                 critic_trunk="shared")
    c.train.update(iterations=20, eval_every=0, eval_problems=200, checkpoint_every=10,
                   output_dir="runs")
    return c
