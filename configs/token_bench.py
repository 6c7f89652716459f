"""The JAX-native learning bench: a tiny random decoder that can learn the token task.

Two agents must make the sum of their one-token moves hit a target symbol mod 4
(`marft_jax/envs/tokens.py`); chance is about 1.6 % (each move is a symbol with probability
4/16, then 1 in 4). The whole rollout is JAX, so `repro_study.py` trains all seeds of a
condition as one seed-vmapped program (`configs/studies/tokens.py`: five algorithms, five
seeds, in minutes on 2 cores).

Why it differs from `tiny_cpu.py` (which cannot learn, by construction):
- `model.tiny.initializer_range = 0.3`: at the usual 0.02 the frozen, tied embedding keeps
  every logit within about ±0.6, so the policy is uniform over the 16 ids whatever the
  adapters do (per-token entropy stays at ln 16 = 2.77 nats for 300 iterations). At 0.3 the
  untrained policy is far from uniform (1.5-2.0 nats) but not deterministic.
- `sampling.max_new_tokens = 1`: a move is one token; further tokens are never rewarded and
  only add entropy and noise to the action-level ratio.
- `ppo.advantage_norm = "none"`: normalising per minibatch (8 decisions an agent) turns
  critic noise into unit-size advantages whenever a minibatch is all failures (early) or all
  successes (late), which made converged seeds collapse (BUILD_NOTES.md, "Token bench").
"""

from configs.tiny_cpu import get_config as tiny_config


def get_config():
    c = tiny_config()
    c.model.tiny.initializer_range = 0.3
    c.sampling.max_new_tokens = 1
    c.ppo.advantage_norm = "none"
    c.train.update(iterations=300, eval_every=25, eval_problems=4, checkpoint_every=50)
    return c
