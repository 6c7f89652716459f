"""`PPOConfig` (every knob of the MARFT updates, reference defaults) and the algorithm registry."""

from __future__ import annotations

import dataclasses

from marft_jax.errors import ConfigError
from marft_jax.models.remat import REMAT_POLICIES
from marft_jax.validation import (FLAG, NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE,
                                  POSITIVE_INT, UNIT, Rule)

LOGPROB_NORMS = ("sum", "token", "word")
CRITIC_TRUNKS = ("base", "shared")
CRITIC_HEADS = ("shared", "per_agent")
ADVANTAGE_NORMS = ("minibatch", "batch", "none")


@dataclasses.dataclass(frozen=True)
class AlgorithmSpec:
    """How an algorithm name assembles the update from the registries.

    Attributes:
        level: "action" (one decision per agent per round) or "token" (every token).
        advantage: a name in `advantages.ADVANTAGE_ESTIMATORS`.
        policy_loss: a name in `losses.POLICY_LOSSES`.
        reward_transform: a name in `advantages.REWARD_TRANSFORMS`.
        uses_critic: whether a value head is evaluated and trained.
    """

    level: str
    advantage: str
    policy_loss: str
    reward_transform: str = "none"
    uses_critic: bool = True


ALGORITHMS = {
    "marft_a": AlgorithmSpec(level="action", advantage="gae_action", policy_loss="action"),
    "marft_t": AlgorithmSpec(level="token", advantage="gae_token", policy_loss="token"),
    "grpo": AlgorithmSpec(level="action", advantage="grpo", policy_loss="action",
                          uses_critic=False),
    "ippo": AlgorithmSpec(level="action", advantage="gae_action", policy_loss="action",
                          reward_transform="ippo"),
}

# The reference's approx-KL skip thresholds (REFERENCE §4.5). They are *not* the defaults
# here: §9.5 notes they silently skip most policy steps (above all the token-level one).
REFERENCE_TARGET_KL = {"marft_a": 1e-3, "ippo": 1e-3, "grpo": 1e-3, "marft_t": 1.7e-6}


# What every numeric / boolean field of `PPOConfig` may hold (finite, with its sign): a
# negative `max_grad_norm` would flip the gradient (`clip_by_global_norm(-1)`), a NaN
# coefficient would make every step non-finite.
PPO_RULES: dict[str, Rule] = {
    "clip_eps": POSITIVE, "value_clip_eps": Rule(low=0.0, low_open=True, optional=True),
    "entropy_coef": NON_NEGATIVE, "value_loss_coef": NON_NEGATIVE,
    "huber_delta": Rule(low=0.0, low_open=True, optional=True), "gamma": UNIT, "lam": UNIT,
    "token_gamma": Rule(low=0.0, high=1.0, optional=True), "lr_actor": POSITIVE,
    "lr_critic": POSITIVE, "adam_eps": POSITIVE, "weight_decay": NON_NEGATIVE,
    "epochs": POSITIVE_INT, "num_minibatches": POSITIVE_INT,
    "grad_accum_steps": NON_NEGATIVE_INT,
    "max_grad_norm": POSITIVE, "critic_max_grad_norm": POSITIVE,
    "critic_warmup_samples": NON_NEGATIVE_INT, "agent_iteration_interval": NON_NEGATIVE_INT,
    "target_kl": Rule(low=0.0, low_open=True, optional=True), "kl_coef": NON_NEGATIVE,
    "advantage_norm_eps": NON_NEGATIVE, "group_size": POSITIVE_INT, "grpo_eps": NON_NEGATIVE,
    "ippo_own_weight": UNIT, "recompute_old_logprobs": FLAG, "skip_no_signal": FLAG,
    "head_chunk": NON_NEGATIVE_INT, "row_trim": FLAG, "shared_prefix": FLAG, "agent_widths": FLAG,
}


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    """Static configuration of one MARFT update (hashable: it is baked into the jit).

    Defaults follow the reference (`marft/config.py`, REFERENCE §4.8) unless said otherwise.

    Attributes:
        algorithm: a name in `ALGORITHMS`: "marft_a", "marft_t", "grpo" or "ippo".
        clip_eps: PPO ratio clip ε.
        value_clip_eps: clip of the new value around the old one (reference: the same 0.2);
            None disables value clipping.
        entropy_coef: entropy bonus coefficient.
        value_loss_coef: value loss coefficient.
        huber_delta: Huber δ of the value loss (symmetric here); None uses e²/2.
        gamma: discount between consecutive decisions (and rounds).
        lam: GAE λ.
        token_gamma: MARFT-T discount between tokens of one action; None = `gamma` (the
            reference applies γ between every pair of tokens; POAD/BAD use 1.0).
        lr_actor: AdamW learning rate of every adapter.
        lr_critic: Adam learning rate of the value head.
        adam_eps: ε of both optimisers.
        weight_decay: AdamW weight decay of the adapters.
        epochs: passes over the trajectory per update.
        num_minibatches: minibatches per epoch, split over the environment axis (the
            remainder of E is dropped, as in the reference).
        grad_accum_steps: micro-batches per minibatch (gradient accumulation); 0 = the
            fewest that fit `train.memory_budget_gb` (`algorithms.memory`, resolved by
            `training.setup.build_setup` before the update is built).
        max_grad_norm: per-adapter gradient-norm clip.
        critic_max_grad_norm: gradient-norm clip of the value head.
        critic_warmup_samples: env samples (rounds × envs) during which only the critic
            trains; the adapters stay unchanged.
        agent_iteration_interval: agent-by-agent schedule: every this many env samples the
            next agent (in decision order) becomes the only one whose policy trains;
            0 = every agent every update.
        target_kl: skip an adapter's policy step when its approx-KL on the minibatch exceeds
            this; None disables (see `REFERENCE_TARGET_KL` for the reference values).
        logprob_norm: MARFT-A sequence log-prob normalisation: "sum", "token" (÷ length) or
            "word" (÷ word count, passed to the update as an array).
        kl_coef: coefficient of the KL penalty to the base policy (adapters off); 0 = off.
        critic_trunk: "base" (features from the base model with adapters off: the
            reference) or "shared" (the acting agent's own forward pass, stop-gradient).
        critic_heads: "shared" (one centralised head: the reference) or "per_agent".
        critic_hidden: widths of the value head's hidden layers.
        advantage_norm: "minibatch" (the reference), "batch" or "none"; statistics over the
            valid decisions (tokens for MARFT-T) only.
        advantage_norm_eps: added to the standard deviation when normalising.
        group_size: GRPO samples per problem (consecutive envs form a group).
        grpo_eps: added to the group standard deviation.
        ippo_own_weight: IPPO reward = w · own + (1 − w) · team mean.
        recompute_old_logprobs: recompute PPO's old log-probs with the full forward at the
            start of the update instead of using `Trajectory.policy_logprobs`.
        remat: rematerialisation of the decoder layers in the update's differentiated
            forward (`models.remat.REMAT_POLICIES`): "none", "layers" (keep only each
            layer's input; recompute the rest in the backward pass) or a
            `jax.checkpoint_policies` name. Same results up to float rounding; less memory
            for about one more forward pass.
        head_chunk: run the LM head of the update's differentiated passes over this many
            action positions at a time, recomputing each chunk's logits in the backward
            pass (`scoring.head_terms`); 0 = all positions at once. The head's float32
            logits and softmax terms are `rows × K × vocab` several times over (~0.5 GB
            for SmolLM2 at 8 rows of 64 actions); a chunk of 128 keeps one chunk's. Same
            results up to float rounding, for one more head matmul.
        row_trim: score `[obs ; action]` rows compacted to the longest row's real tokens
            (each row's tokens moved to the end of the row, the columns that are padding in
            every row dropped; `scoring.compact_rows`) instead of the observation width plus
            the action width, which the batch-wide trim keeps. The training iteration
            computes the width on the host (`scoring.row_width`, a multiple of 32) and
            passes it to the update; same results up to float rounding.
        shared_prefix: run each agent's observation prefix (its system prompt,
            `ObservationLayout.prefix`, which every observation starts with) once per
            scoring call — once per micro-batch in the update, once per env chunk in the
            pre-update passes — and let every row's remainder attend to its keys and values
            (`scoring.score_actions(prefix=...)`; the critic's features too, either
            trunk); gradients reach the adapters through the one prefix pass. Same
            results up to float rounding. Excludes `row_trim` (its compacted rows would
            need their own column split).
        agent_widths: with `shared_prefix`, score each agent's rows in a pass of their own,
            only as wide as that agent's observations can be (`RolloutConfig.
            agent_obs_tokens`: the first agent of a chain sees no predecessor's output)
            instead of all rows at the widest agent's. Same results up to float rounding;
            a pass per agent, so the update's program (and its compile time) grows with
            the team.
        skip_no_signal: skip an adapter's policy step when none of its decisions in the
            minibatch has a nonzero advantage (after normalisation), counted as
            `skipped_no_signal`. Such a step follows only the entropy bonus and KL term, and
            Adam makes it a full-size step: GRPO groups that all scored 0 drove a policy to
            maximum entropy (BUILD_NOTES.md, "Learning study"). The reference steps anyway
            (False); critic-based advantages are practically never all zero.
    """

    algorithm: str = "marft_a"
    clip_eps: float = 0.2
    value_clip_eps: float | None = 0.2
    entropy_coef: float = 0.01
    value_loss_coef: float = 1.0
    huber_delta: float | None = 10.0
    gamma: float = 0.99
    lam: float = 0.95
    token_gamma: float | None = None
    lr_actor: float = 5e-7
    lr_critic: float = 5e-4
    adam_eps: float = 1e-5
    weight_decay: float = 0.0
    epochs: int = 5
    num_minibatches: int = 4
    grad_accum_steps: int = 1
    max_grad_norm: float = 0.5
    critic_max_grad_norm: float = 0.5
    critic_warmup_samples: int = 0
    agent_iteration_interval: int = 0
    target_kl: float | None = None
    logprob_norm: str = "sum"
    kl_coef: float = 0.0
    critic_trunk: str = "base"
    critic_heads: str = "shared"
    critic_hidden: tuple[int, ...] = (1024, 512)
    advantage_norm: str = "minibatch"
    advantage_norm_eps: float = 1e-8
    group_size: int = 1
    grpo_eps: float = 1e-6
    ippo_own_weight: float = 0.5
    recompute_old_logprobs: bool = False
    skip_no_signal: bool = True
    remat: str = "none"
    head_chunk: int = 0
    row_trim: bool = False
    shared_prefix: bool = False
    agent_widths: bool = True

    def __post_init__(self):
        if self.algorithm not in ALGORITHMS:
            raise ConfigError(f"ppo config: field 'algorithm' is {self.algorithm!r}; "
                              f"choose from {list(ALGORITHMS)}")
        for name, rule in PPO_RULES.items():
            problem = rule.problem(getattr(self, name))
            if problem:
                raise ConfigError(f"ppo config: field {name!r} {problem}")
        hidden = self.critic_hidden
        if not isinstance(hidden, (tuple, list)) or any(
                POSITIVE_INT.problem(w) for w in hidden):
            raise ConfigError(f"ppo config: field 'critic_hidden' must be a list of positive "
                              f"integers, got {hidden!r}")
        object.__setattr__(self, "critic_hidden", tuple(hidden))
        choices = (("logprob_norm", LOGPROB_NORMS), ("critic_trunk", CRITIC_TRUNKS),
                   ("critic_heads", CRITIC_HEADS), ("advantage_norm", ADVANTAGE_NORMS),
                   ("remat", tuple(REMAT_POLICIES)))
        for name, allowed in choices:
            if getattr(self, name) not in allowed:
                raise ConfigError(f"ppo config: field {name!r} is {getattr(self, name)!r}; "
                                  f"choose from {list(allowed)}")
        if not self.critic_hidden:
            raise ConfigError("ppo config: field 'critic_hidden' needs at least one width")
        if self.shared_prefix and self.row_trim:
            raise ConfigError("ppo config: field 'shared_prefix' cannot be combined with "
                              "'row_trim' (set one of them false)")

    @property
    def spec(self) -> AlgorithmSpec:
        """The registry entry of `algorithm`."""
        return ALGORITHMS[self.algorithm]

    @property
    def discount_between_tokens(self) -> float:
        """The MARFT-T discount inside one action (`token_gamma`, else `gamma`)."""
        return self.gamma if self.token_gamma is None else self.token_gamma

    def replace(self, **changes) -> PPOConfig:
        """A copy with `changes` applied (validated again)."""
        return dataclasses.replace(self, **changes)
