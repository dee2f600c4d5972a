"""Key/value caches for streaming attention.

Both caches share one protocol: `update_and_fetch(k, v)` stores the keys/values of the
new positions and returns `(keys, values, mask)` for attention, where `mask` is a
boolean `[T, S]` array (True = may attend) or None when every query may see every key.
`offset` counts every position ever written (it drives RoPE); `reset()` empties the cache.
Keys are `[B, H, T, D]`.
"""

from __future__ import annotations

import mlx.core as mx


def attention_mask(
    q_start: int, num_q: int, k_start: int, num_k: int, causal: bool, context: int | None
) -> mx.array | None:
    """Boolean mask for queries at positions `q_start + i` and keys at `k_start + j`.

    A query at position p sees a key at position s iff s <= p (when causal) and
    p - s < context (when a context is set): `context` keys including itself.
    Returns None when nothing is masked.
    """
    if not causal:
        return None
    last_q = q_start + num_q - 1
    first_hidden_future = k_start + num_k - 1 > q_start
    too_old = context is not None and last_q - k_start >= context
    if not first_hidden_future and not too_old:
        return None
    q = mx.arange(q_start, q_start + num_q)[:, None]
    k = mx.arange(k_start, k_start + num_k)[None, :]
    delta = q - k
    mask = delta >= 0
    if context is not None:
        mask = mask & (delta < context)
    return mask


def regrow(cache: "KVCache | RingKVCache", n: int, size: int, k: mx.array, v: mx.array) -> None:
    """Replaces `cache`'s buffers by `size`-slot ones (dtypes and shapes of `k`, `v` `[B, H, T, D]`)
    holding its first `n` slots, zeros after; the old buffers are freed at once, outside MLX's
    buffer cache (`grow_buffers`): growing 256 slots at a time, they would otherwise pile up in it."""
    B, H, _, D = k.shape
    old = [cache.keys, cache.values]
    cache.keys = cache.values = None  # the list holds the only references
    if old[0] is None or n == 0:
        cache.keys = mx.zeros((B, H, size, D), dtype=k.dtype)
        cache.values = mx.zeros((B, H, size, v.shape[-1]), dtype=v.dtype)
        return
    old[:] = [old[0][..., :n, :].astype(k.dtype), old[1][..., :n, :].astype(v.dtype)]
    grow_buffers(old, size)
    cache.keys, cache.values = old


class KVCache:
    """Growing cache that keeps every position (e.g. the depformer, reset every frame)."""

    def __init__(self, causal: bool = True, context: int | None = None, step: int = 256):
        self.causal = causal
        self.context = context
        self.step = step
        self.keys: mx.array | None = None
        self.values: mx.array | None = None
        self.offset = 0

    def reset(self) -> None:
        # Buffers are kept to avoid re-allocating them; only the fill level is cleared.
        self.offset = 0

    def update_and_fetch(self, k: mx.array, v: mx.array) -> tuple[mx.array, mx.array, mx.array | None]:
        T = k.shape[2]
        start = self.offset
        needed = start + T
        if self.keys is None or needed > self.keys.shape[2] or self.keys.dtype != k.dtype:
            size = ((needed + self.step - 1) // self.step) * self.step
            regrow(self, start, size, k, v)
        self.keys[..., start:needed, :] = k
        self.values[..., start:needed, :] = v
        self.offset = needed
        mask = attention_mask(start, T, 0, needed, self.causal, self.context)
        return self.keys[..., :needed, :], self.values[..., :needed, :], mask

    @property
    def nbytes(self) -> int:
        return 0 if self.keys is None else self.keys.nbytes + self.values.nbytes


class RingKVCache:
    """Keeps the last `capacity` positions; memory stays bounded however long the stream runs.

    With `capacity == context`, a single-position step attends to exactly the `context`
    most recent keys including its own (torch `RingKVCache` semantics). Multi-position
    calls attend with an exact causal/window mask and then keep the newest `capacity` keys.
    """

    def __init__(self, capacity: int, causal: bool = True, context: int | None = None, step: int = 256):
        if capacity < 1:
            raise ValueError(f"ring capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.causal = causal
        self.context = capacity if context is None else context
        self.step = step
        self.keys: mx.array | None = None
        self.values: mx.array | None = None
        self.offset = 0
        self._idx = 0  # slot of the next write

    def reset(self) -> None:
        self.offset = 0
        self._idx = 0

    @property
    def _filled(self) -> int:
        return min(self.offset, self.capacity)

    def _ordered(self) -> tuple[mx.array, mx.array]:
        """Stored keys/values in temporal order (oldest first)."""
        n = self._filled
        k, v = self.keys[..., :n, :], self.values[..., :n, :]
        if n == self.capacity and self._idx != 0:
            k = mx.concatenate([k[..., self._idx :, :], k[..., : self._idx, :]], axis=2)
            v = mx.concatenate([v[..., self._idx :, :], v[..., : self._idx, :]], axis=2)
        return k, v

    def _grow(self, k: mx.array, v: mx.array, needed: int) -> None:
        size = min(self.capacity, ((needed + self.step - 1) // self.step) * self.step)
        if self.keys is not None and self.keys.shape[2] >= size and self.keys.dtype == k.dtype:
            return
        regrow(self, self._filled, size, k, v)

    def update_and_fetch(self, k: mx.array, v: mx.array) -> tuple[mx.array, mx.array, mx.array | None]:
        T = k.shape[2]
        if T == 1:
            return self._update_one(k, v)
        return self._update_many(k, v)

    def _update_one(self, k: mx.array, v: mx.array) -> tuple[mx.array, mx.array, mx.array | None]:
        self._grow(k, v, self._filled + 1)
        i = self._idx
        self.keys[..., i : i + 1, :] = k
        self.values[..., i : i + 1, :] = v
        self.offset += 1
        self._idx = (i + 1) % self.capacity
        n = self._filled
        # Order within the window is irrelevant to attention (RoPE is already applied).
        keys, values = self.keys[..., :n, :], self.values[..., :n, :]
        mask = None
        if self.causal and self.context < n:
            # Only reachable when context < capacity: hide the slots older than the window.
            newest = (self._idx - 1) % self.capacity
            age = (newest - mx.arange(n) + n) % n
            mask = (age < self.context)[None, :]
        return keys, values, mask

    def _update_many(self, k: mx.array, v: mx.array) -> tuple[mx.array, mx.array, mx.array | None]:
        T = k.shape[2]
        start = self.offset
        if self.keys is not None and self._filled > 0:
            old_k, old_v = self._ordered()
            keys = mx.concatenate([old_k, k], axis=2)
            values = mx.concatenate([old_v, v], axis=2)
        else:
            keys, values = k, v
        S = keys.shape[2]
        mask = attention_mask(start, T, start + T - S, S, self.causal, self.context)
        keep = min(S, self.capacity)
        B, H, _, D = k.shape
        size = min(self.capacity, ((keep + self.step - 1) // self.step) * self.step)
        if self.keys is not None and self.keys.dtype == k.dtype:
            size = max(size, self.keys.shape[2])
        self.keys = mx.zeros((B, H, size, D), dtype=k.dtype)
        self.values = mx.zeros((B, H, size, v.shape[-1]), dtype=v.dtype)
        self.keys[..., :keep, :] = keys[..., S - keep :, :]
        self.values[..., :keep, :] = values[..., S - keep :, :]
        self.offset = start + T
        self._idx = keep % self.capacity
        return keys, values, mask

    @property
    def nbytes(self) -> int:
        return 0 if self.keys is None else self.keys.nbytes + self.values.nbytes


# Fixed-shape key/value buffers for the compiled frame: the buffer shape changes only at a few
# bucket sizes (so a handful of graphs serve a whole stream), the write slot and the number of
# filled slots are array inputs.

FIRST_BUCKET = 128


def bucket_size(needed: int, capacity: int | None, first: int = FIRST_BUCKET) -> int:
    """Buffer length holding `needed` positions: `first` doubled as often as needed, at most
    `capacity` (a ring's size; None for a buffer that may grow without bound)."""
    size = first
    while size < needed:
        size *= 2
    return size if capacity is None else min(size, capacity)


def grow_buffer(buf: mx.array, size: int) -> mx.array:
    """`buf` `[B, H, S, D]` zero-padded along the positions axis to `size` slots (kept slots unchanged)."""
    extra = size - buf.shape[2]
    if extra <= 0:
        return buf
    B, H, _, D = buf.shape
    return mx.concatenate([buf, mx.zeros((B, H, extra, D), dtype=buf.dtype)], axis=2)


def grow_buffers(buffers: list[mx.array], size: int) -> None:
    """Replaces each of `buffers` (in place, in the list) by its `grow_buffer` to `size` slots.

    Each one is evaluated on its own with MLX's buffer cache off, so that the old buffer is freed
    as soon as it is copied: a full 3000-step conversation then peaks with the new buffers and one
    old one at most, and none is left in the cache (there they raised the process's peak resident
    memory by up to the cache limit, 32 MB on the CPU, on top of the full-size buffers)."""
    limit = mx.set_cache_limit(0)
    try:
        for i in range(len(buffers)):
            buffers[i] = grow_buffer(buffers[i], size)
            mx.eval(buffers[i])
    finally:
        mx.set_cache_limit(limit)


def filled_mask(filled: mx.array, size: int) -> mx.array:
    """`[1, size]` boolean mask of the slots written so far (slots `< filled`)."""
    return (mx.arange(size) < filled)[None, :]
