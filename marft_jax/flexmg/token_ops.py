"""Variable-length token sequences in fixed-size buffers (pure, jittable, per row).

A sequence is a right-padded buffer plus a length. Observations are assembled by appending
segments in token space, never by re-tokenising decoded text, so the tokens scored in the
update are exactly the tokens that were sampled.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def append(buffer: Array, length: Array, segment: Array, segment_length: Array) -> tuple[Array, Array]:
    """Appends `segment[:segment_length]` to `buffer[:length]` for one row.

    Args:
        buffer: `[S]` int32, right-padded.
        length: scalar int32, tokens in use.
        segment: `[L]` int32, right-padded.
        segment_length: scalar int32, real tokens in `segment`.

    Returns:
        `(buffer [S], length + segment_length)`. Tokens that would fall past `S` are
        dropped, and the returned length is clipped to `S` (callers size buffers so that
        this does not happen; `overflowed` reports it).
    """
    size = buffer.shape[0]
    seg_len = segment.shape[0]
    # Scatter each segment token to length + k; masked or out-of-range tokens go nowhere.
    idx = length + jnp.arange(seg_len)
    keep = (jnp.arange(seg_len) < segment_length) & (idx < size)
    idx = jnp.where(keep, idx, size)  # index `size` is dropped by mode="drop"
    buffer = buffer.at[idx].set(segment.astype(buffer.dtype), mode="drop")
    return buffer, jnp.minimum(length + segment_length, size)


def overflowed(length: Array, segment_length: Array, size: int) -> Array:
    """True where appending `segment_length` tokens to `length` would not fit in `size`."""
    return length + segment_length > size


def to_left_padded(buffer: Array, length: Array, pad_id: int = 0) -> tuple[Array, Array]:
    """Right-padded `[S]` row -> left-padded `([S] tokens, [S] bool mask)`."""
    size = buffer.shape[0]
    src = jnp.arange(size) - (size - length)  # destination k reads source k - (S - len)
    valid = src >= 0
    tokens = jnp.where(valid, buffer[jnp.clip(src, 0, size - 1)], pad_id)
    return tokens.astype(buffer.dtype), valid


def concat_segments(size: int, segments: list[tuple[Array, Array]], dtype=jnp.int32) -> tuple[Array, Array]:
    """Concatenates `(segment [L], length)` pairs into one right-padded `[size]` row."""
    buffer = jnp.zeros((size,), dtype)
    length = jnp.zeros((), jnp.int32)
    for segment, seg_len in segments:
        buffer, length = append(buffer, length, segment, seg_len)
    return buffer, length
