"""The main job: the reference dual team (reasoner -> actor, math_dual.json prompts) on
SmolLM2-135M-Instruct, MARFT-A on generated 2-digit addition word problems, on a CPU.

Sized for a 2-core CPU in about half an hour (figures in BUILD_NOTES.md; ~23 min of it
training and the evaluations after, ~6 min the evaluations before): single-round
episodes (horizon 1), 48-token responses, 16 envs and 20 iterations; held-out accuracy on
200 problems before and after (greedy), and after training also sampled at the training
temperature, evaluated 40 problems per call.

What makes the updates carry signal (BUILD_NOTES.md, "SmolLM2 learning levers"): sampling
at 0.3 (the untrained team succeeds in ~25 % of its rollouts instead of ~5 % at 0.7),
16 episodes an iteration in two minibatches of 8 envs, advantages normalised over the whole
batch (per 2-env minibatch, critic noise became unit-size steps whenever no episode in it
succeeded) and no entropy bonus (under Adam it made full-size steps towards noise). With
the earlier settings (T 0.7, 8 envs, four 2-env minibatches, entropy 0.01) three seeds
gained +2.2 ± 8.0 points; with these, +26.3 ± 5.0 (seeds 0-2, 95 % interval [13.8, 38.8]).

Each agent's system prompt is computed once per wave in the sampler and once per scoring
call in the update (`rollout.shared_prefix`, `ppo.shared_prefix`), and each agent's rows
are scored only as wide as its observations can be (`ppo.agent_widths`: the reasoner's
are 41 + 48 columns, the actor's 93 + 48): the same results up to float rounding, 1.7-1.8x
the whole rows' episodes per CPU-minute and 2.8-2.9x those of the code the throughput
issue was filed on (BUILD_NOTES.md, "Throughput"; the seeds above ran with whole rows,
`configs/studies/throughput.py` reran them with these).

LoRA learning rates far above the reference's 1e-6 are normal for LoRA; at 2e-4 the policy
barely moved (approx-KL ~1e-6 per update). With the per-token-mean sequence log-prob
("token"), 7e-4 and 2e-3 collapsed the actor to 1-2 token answers within 5-15 iterations
(the 1/length weight favours short answers); the reference's summed log-prob ("sum") at
5e-4 stays stable.
"""

from marft_jax.training.config import base_config


def get_config():
    c = base_config()
    c.model.name = "smollm2-135m-instruct"
    c.team.profiles = "math_dual"
    c.team.layout = "chat"
    c.task.update(kind="arithmetic", digits=2, terms=2, ops=("+",), train_problems=2000,
                  heldout_problems=200, split_seed=0)
    c.rollout.update(num_envs=16, num_rounds=1, horizon=1, obs_tokens=0, shared_prefix=True)
    c.sampling.update(max_new_tokens=48, temperature=0.3, top_k=50)
    c.ppo.update(algorithm="marft_a", lr_actor=5e-4, lr_critic=1e-3, epochs=1,
                 num_minibatches=2, advantage_norm="batch", entropy_coef=0.0,
                 logprob_norm="sum", critic_trunk="shared", shared_prefix=True)
    c.train.update(iterations=20, eval_every=0, eval_problems=200, eval_batch=40,
                   eval_sampled=True, checkpoint_every=10, output_dir="runs")
    return c
