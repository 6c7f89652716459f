"""The Trajectory pytree: what a Flex-MG rollout produces and a PPO update consumes.

Axes are explicit and never flattened implicitly:
  R = rounds collected per update, A = agents (profile order), E = environments,
  O = observation tokens (left-padded), K = action tokens (right-padded).
The agents' decision order within a round (the linearised dependency graph) is given by
`DependencyGraph.order`; GAE follows it, the arrays stay in profile order.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from marft_jax.flexmg.env_axes import env_field

Array = jax.Array


@struct.dataclass
class Trajectory:
    """One rollout of R rounds over E environments by A agents.

    Attributes:
        obs_tokens: `[R, A, E, O]` int32, each decision's observation, left-padded.
        obs_mask: `[R, A, E, O]` bool, real observation tokens.
        action_tokens: `[R, A, E, K]` int32, the sampled response, right-padded.
        action_mask: `[R, A, E, K]` bool, real response tokens (the stop token included).
        behaviour_logprobs: `[R, A, E, K]` float32, log-probs under the distribution actually
            sampled from (temperature / top-k / top-p applied).
        policy_logprobs: `[R, A, E, K]` float32, log-probs of the same tokens under the raw
            (untempered) policy at rollout time: PPO's "old" log-probs.
        rewards: `[R, A, E]` float32, reward of each decision after placement (reference:
            the score in the last agent's slot).
        dones: `[R, E]` bool, the episode ended after round r (the env was then reset).
        scores: `[R, E]` float32, the task score of round r (fraction of answering agents
            correct), for metrics.
        next_obs_tokens: `[E, O]` int32, observation of the first decision of round R (the
            bootstrap state), left-padded.
        next_obs_mask: `[E, O]` bool.
        adapter_ids: `[A]` int32, the adapter each agent uses.
        critic_obs_tokens: `[R, A, E, O]` int32, a heterogeneous team's observations in the
            critic base's tokens (what the critic reads; `obs_tokens` holds each agent's
            own base's tokens); None for a team on one base.
        critic_obs_mask: `[R, A, E, O]` bool, or None.
        obs_features: `[R, A, E, H]` the policy trunk's final hidden state at each
            observation's last token, from the sampler's prefill with the rollout's
            adapters (the action-level "shared" critic trunk's old-value input, so the
            update need not run the observations again); None when the generator does not
            provide it (a heterogeneous team: its critic reads another base).
    """

    # env_field(env axis, rank): where `parallel.Plan` splits the environments.
    obs_tokens: Array = env_field(2, 4)
    obs_mask: Array = env_field(2, 4)
    action_tokens: Array = env_field(2, 4)
    action_mask: Array = env_field(2, 4)
    behaviour_logprobs: Array = env_field(2, 4)
    policy_logprobs: Array = env_field(2, 4)
    rewards: Array = env_field(2, 3)
    dones: Array = env_field(1, 2)
    scores: Array = env_field(1, 2)
    next_obs_tokens: Array = env_field(0, 2)
    next_obs_mask: Array = env_field(0, 2)
    adapter_ids: Array = env_field(None, 1)  # replicated
    critic_obs_tokens: Array | None = env_field(2, 4, default=None)
    critic_obs_mask: Array | None = env_field(2, 4, default=None)
    obs_features: Array | None = env_field(2, 4, default=None)

    @property
    def num_rounds(self) -> int:
        return self.obs_tokens.shape[0]

    @property
    def num_agents(self) -> int:
        return self.obs_tokens.shape[1]

    @property
    def num_envs(self) -> int:
        return self.obs_tokens.shape[2]

    def check_shapes(self) -> None:
        """Asserts the axis contract with chex (callable inside jit)."""
        import chex

        r, a, e, o = self.obs_tokens.shape
        k = self.action_tokens.shape[-1]
        chex.assert_shape([self.obs_tokens, self.obs_mask], (r, a, e, o))
        chex.assert_shape([self.action_tokens, self.action_mask, self.behaviour_logprobs,
                           self.policy_logprobs], (r, a, e, k))
        chex.assert_shape(self.rewards, (r, a, e))
        chex.assert_shape([self.dones, self.scores], (r, e))
        chex.assert_shape([self.next_obs_tokens, self.next_obs_mask], (e, o))
        chex.assert_shape(self.adapter_ids, (a,))
        if self.critic_obs_tokens is not None:
            chex.assert_shape([self.critic_obs_tokens, self.critic_obs_mask], (r, a, e, o))
        if self.obs_features is not None:
            chex.assert_shape(self.obs_features, (r, a, e, None))
        chex.assert_type([self.obs_tokens, self.action_tokens, self.next_obs_tokens,
                          self.adapter_ids], jnp.int32)


def trim_padding(traj: Trajectory, multiple: int = 32) -> Trajectory:
    """Drops columns that are padding in every row (host-side, between rollout and update).

    Observations are left-padded to a fixed width and actions right-padded to the token
    budget; most of that width is padding on short tasks. Cutting it to the longest real
    row, rounded up to `multiple` (so the update compiles for a few widths only), makes the
    update's forward and backward passes proportionally cheaper and changes no result.
    """
    def width(need, axis_len):
        return min(axis_len, -(-max(1, need) // multiple) * multiple)

    # Reduced on the devices (not via NumPy), so it also works on multi-process arrays.
    longest = lambda mask: int(jnp.max(jnp.sum(mask, axis=-1, dtype=jnp.int32)))
    o = traj.obs_tokens.shape[-1]
    obs_masks = [traj.obs_mask, traj.next_obs_mask]
    if traj.critic_obs_mask is not None:
        obs_masks.append(traj.critic_obs_mask)
    keep_o = width(max(longest(m) for m in obs_masks), o)
    k = traj.action_tokens.shape[-1]
    keep_k = width(longest(traj.action_mask), k)
    if traj.critic_obs_tokens is not None:
        traj = traj.replace(critic_obs_tokens=traj.critic_obs_tokens[..., o - keep_o:],
                            critic_obs_mask=traj.critic_obs_mask[..., o - keep_o:])
    return traj.replace(
        obs_tokens=traj.obs_tokens[..., o - keep_o:], obs_mask=traj.obs_mask[..., o - keep_o:],
        next_obs_tokens=traj.next_obs_tokens[..., o - keep_o:],
        next_obs_mask=traj.next_obs_mask[..., o - keep_o:],
        action_tokens=traj.action_tokens[..., :keep_k],
        action_mask=traj.action_mask[..., :keep_k],
        behaviour_logprobs=traj.behaviour_logprobs[..., :keep_k],
        policy_logprobs=traj.policy_logprobs[..., :keep_k])
