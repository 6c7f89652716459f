"""Tiny random decoder on the JAX-native token task: tests and smoke runs (seconds)."""

from marft_jax.training.config import base_config


def get_config():
    c = base_config()
    c.model.name = "tiny"
    c.model.tiny.vocab_size = 16
    c.team.profiles = "token_pair"
    c.task.kind = "tokens"
    c.task.num_symbols = 4
    c.rollout.update(num_envs=8, num_rounds=2, horizon=1, obs_tokens=16)
    c.sampling.update(max_new_tokens=2, temperature=1.0, top_k=0)
    c.ppo.update(lr_actor=1e-2, lr_critic=1e-3, epochs=2, num_minibatches=2,
                 critic_hidden=(32, 16))
    c.lora.rank = 4
    c.train.update(iterations=3, eval_every=0, eval_problems=4, checkpoint_every=1,
                   output_dir="runs")
    return c
