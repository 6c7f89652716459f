"""Observation layouts: the token segments an agent's observation is assembled from.

The observation of agent i in round t is

    prefix[i] + state_t + sum_{j in deps(i), this round} (pred_open[j] + a_j + pred_close)
              + suffix[i]

and the game state grows as

    state_0   = problem_open + problem + problem_close
    state_t+1 = state_t + sum_j (hist_open[j] + a_j + hist_close) + judge[correct?]

Two layouts fill these segments:
- "chat" (default): the model's chat template. The profile prompt becomes the system
  message, the state and predecessors the user message, and the agent's role tag opens its
  assistant turn.
- "reference": the reference implementation's pseudo-ChatML string layout (REFERENCE.md
  §2.2), so reference profiles behave as they do there: `prompt + state +
  "<|im_start|>role_j: a_j<|im_end|>\\n"... + "<|im_start|>role_i: "`.
All segments are tokenised once, here, on the host.
"""

from __future__ import annotations

import re
from typing import Protocol, Sequence

import jax
import numpy as np
from flax import struct

from marft_jax.errors import ConfigError
from marft_jax.flexmg.profiles import Team

Array = jax.Array
JUDGE_LINES = ("judge: The answer is incorrect.\n", "judge: The answer is correct.\n")
_SENTINEL = "\u2063MARFT_USER_CONTENT\u2063"


class TextTokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...

    def chat_prompt_text(self, messages: list[dict], add_generation_prompt: bool = True) -> str: ...


@struct.dataclass
class Segments:
    """A stack of right-padded token segments: `tokens [n, L]` int32, `lengths [n]` int32."""

    tokens: Array
    lengths: Array

    @classmethod
    def from_lists(cls, rows: Sequence[Sequence[int]]) -> "Segments":
        width = max(1, max(len(r) for r in rows))
        tokens = np.zeros((len(rows), width), np.int32)
        for i, r in enumerate(rows):
            tokens[i, :len(r)] = r
        return cls(tokens=tokens, lengths=np.array([len(r) for r in rows], np.int32))

    @property
    def max_length(self) -> int:
        return int(np.max(self.lengths))


@struct.dataclass
class ObservationLayout:
    """Token segments of every agent's observation (see the module docstring)."""

    prefix: Segments  # [agents, ...]
    suffix: Segments  # [agents, ...]
    problem_open: Segments  # [1, ...]
    problem_close: Segments  # [1, ...]
    hist_open: Segments  # [agents, ...]
    hist_close: Segments  # [1, ...]
    pred_open: Segments  # [agents, ...]
    pred_close: Segments  # [1, ...]
    judge: Segments  # [2, ...]: 0 = incorrect, 1 = correct
    style: str = struct.field(pytree_node=False, default="chat")


def _strip_pseudo_chatml(prompt: str) -> str:
    """'<|im_start|>system: text<|im_end|>' -> 'text' (for the chat layout's system message)."""
    text = re.sub(r"^\s*<\|im_start\|>\s*system\s*:?\s*", "", prompt)
    text = re.sub(r"\s*<\|im_end\|>\s*$", "", text)
    return text.strip()


def _reference_segments(team: Team, tokenizer: TextTokenizer):
    """The reference's pseudo-ChatML: each profile prompt as it is, `<|im_start|>` turns."""
    enc, roles = tokenizer.encode, team.roles
    prefix = [enc(p.prompt) for p in team.profiles]
    suffix = [enc(f"<|im_start|>{r}: ") for r in roles]
    pred_open = [enc(f"<|im_start|>{r}: ") for r in roles]
    return (prefix, suffix, enc("<|im_start|>problem: "), enc("<|im_end|>\n"), pred_open,
            enc("<|im_end|>\n"))


def _chat_segments(team: Team, tokenizer: TextTokenizer):
    """The tokenizer's chat template: the profile prompt as the system message, the
    observation as the user message, then the agent's role."""
    enc = tokenizer.encode
    prefix, suffix = [], []
    for p in team.profiles:
        text = tokenizer.chat_prompt_text(
            [{"role": "system", "content": _strip_pseudo_chatml(p.prompt)},
             {"role": "user", "content": _SENTINEL}], add_generation_prompt=True)
        if text.count(_SENTINEL) != 1:
            raise ConfigError("tokenizer: the chat template does not render the user "
                              "message verbatim; use layout='reference'")
        before, after = text.split(_SENTINEL)
        prefix.append(enc(before))
        suffix.append(enc(after + f"{p.role}: "))
    pred_open = [enc(f"{r}: ") for r in team.roles]
    return prefix, suffix, enc("problem: "), enc("\n"), pred_open, enc("\n")


# Layout styles (`team.layout`, checked by `training.config.finalize`): each gives the
# prefix, suffix, problem open / close, prediction open and close segments.
_STYLES = {"chat": _chat_segments, "reference": _reference_segments}
LAYOUTS = tuple(_STYLES)


def build_layout(team: Team, tokenizer: TextTokenizer, style: str = "chat") -> ObservationLayout:
    """Tokenises the observation segments of `team` for `style` (one of `LAYOUTS`)."""
    enc = tokenizer.encode
    roles = team.roles
    prefix, suffix, problem_open, problem_close, pred_open, pred_close = \
        _STYLES[style](team, tokenizer)
    return ObservationLayout(
        prefix=Segments.from_lists(prefix),
        suffix=Segments.from_lists(suffix),
        problem_open=Segments.from_lists([problem_open]),
        problem_close=Segments.from_lists([problem_close]),
        hist_open=Segments.from_lists([enc(f"{r}: ") for r in roles]),
        hist_close=Segments.from_lists([enc("\n")]),
        pred_open=Segments.from_lists(pred_open),
        pred_close=Segments.from_lists([pred_close]),
        judge=Segments.from_lists([enc(line) for line in JUDGE_LINES]),
        style=style,
    )


def state_capacity(layout: ObservationLayout, problem_tokens: int, action_tokens: int,
                   num_agents: int, horizon: int) -> int:
    """Tokens the game state can reach: the problem plus `horizon` rounds of history."""
    per_round = (num_agents * (int(np.max(layout.hist_open.lengths)) + action_tokens
                               + layout.hist_close.max_length) + layout.judge.max_length)
    return (layout.problem_open.max_length + problem_tokens + layout.problem_close.max_length
            + horizon * per_round)


def observation_capacity(layout: ObservationLayout, state_tokens: int, action_tokens: int,
                         max_predecessors: int) -> int:
    """Longest observation: prefix + state + predecessors' outputs + suffix."""
    return (layout.prefix.max_length + state_tokens
            + max_predecessors * _prediction_tokens(layout, action_tokens)
            + layout.suffix.max_length)


def _prediction_tokens(layout: ObservationLayout, action_tokens: int) -> int:
    """The most tokens one predecessor's output takes in an observation."""
    return int(np.max(layout.pred_open.lengths)) + action_tokens + layout.pred_close.max_length


def agent_observation_capacities(layout: ObservationLayout, state_tokens: int,
                                 action_tokens: int,
                                 predecessors: Sequence[int]) -> tuple[int, ...]:
    """Each agent's longest observation (its own prefix and suffix, `predecessors[i]`
    outputs), each at most `observation_capacity` with the largest count.

    A dynamic topology only switches dependencies off, so the static counts bound it too.
    """
    pred = _prediction_tokens(layout, action_tokens)
    return tuple(int(layout.prefix.lengths[i]) + state_tokens + n * pred
                 + int(layout.suffix.lengths[i]) for i, n in enumerate(predecessors))


def remainder_columns(capacity: int, prefix_length: int) -> int:
    """Columns an observation of at most `capacity` tokens needs after its agent's shared
    prefix of `prefix_length` tokens (at least one: a row always has a last observation
    column). The rollout's waves and the update's per-agent passes both cut to it."""
    return max(1, int(capacity) - int(prefix_length))
