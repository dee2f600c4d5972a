"""One streaming frame of Moshi as pure functions, so that `mx.compile` turns it into fixed graphs.

`moshi_frame(...)` runs what `LmGen.step` does for one 80 ms frame — token-ring bookkeeping,
temporal transformer, text sampler, the depformer's codebook steps and the audio sampler — on
explicit state: the token ring, the temporal KV buffers (fixed shape, written at an array slot),
the random key and the frame index (an array). Step 3 and step 30,000 therefore run the same
graphs; only the KV buffer length changes, at a few bucket sizes (see `modules.kv_cache`).
It runs as stages (`frame_stages`: `temporal_stage`s, then `depth_stage`s), one compiled graph
each: `LmGen` starts each stage before it builds the next, so building a graph overlaps the work
of the previous one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import mlx.core as mx
import mlx.nn as nn

from ..modules.attention import rope_rotations
from ..modules.transformer import Linear, StepOps, attention_bias, call, sin_embedding
from .lm import ZERO_TOKEN, Lm, ScaledEmbedding

Sampler = Callable[..., mx.array]


@dataclass(frozen=True)
class FrameSpec:
    """What the frame function needs besides its array inputs (fixed until `LmGen.reset`)."""

    lm: Lm
    text_sampler: Sampler
    audio_sampler: Sampler
    ring: int  # columns of the token ring (max_delay + 2)
    linear: Linear = call  # how Linear layers are applied (see `products.transposed_linear`)
    # Conditioning (see `LmGen`): the `[B', 1, D]` offset added to every input, and classifier-free
    # guidance: with `cfg_coef != 1` the model runs on 2B rows (conditioned, then contrast) and each
    # logit is `contrast + cfg_coef * (conditioned - contrast)`, as torch `LMGen`.
    sum_condition: mx.array | None = None
    cfg_coef: float = 1.0
    cross_kv: tuple | None = None  # per temporal layer, the cross-attention source's (keys, values)
    # TTS's state machine: when the text sampler draws `text_choice`, the forced text is the last
    # column of `forced` instead of the first; the frame then also returns the sampled text.
    text_choice: int | None = None
    # `StepOps(lean=...)` and RoPE as matrix products: None picks them on the CPU backend only.
    lean: bool | None = None
    # Whether the lean frame applies RoPE as one matrix product (where that product is exact, see
    # `attention.rope_product_is_exact`) rather than with `mx.fast.rope`.
    rope_product: bool = True


def supports_compiled_frame(lm: Lm) -> str | None:
    """None when `moshi_frame` handles this model's temporal transformer, else the reason it does not."""
    tcfg = lm.cfg.transformer
    if tcfg.weights_per_step:
        return "the temporal transformer has per-step weights"
    if tcfg.positional_embedding not in ("rope", "sin", "none"):
        return f"positional embedding {tcfg.positional_embedding!r}"
    if not tcfg.causal:
        return "the temporal transformer is not causal"
    return None


def kv_dtype(lm: Lm) -> mx.Dtype:
    """Dtype of the temporal keys/values (read off a lazy graph that is never evaluated)."""
    layer = lm.transformer.layers[0]
    x = lm.embed(lm.initial_tokens(1))
    _, k, _ = layer.self_attn.project(layer.norm1(x), 0, 0)
    return k.dtype


class _Ring:
    """The token ring's constants for one frame, made from Python lists (constants of the frame
    graph, no nodes); `[1, K, 1]` per stream, `[1, 1, CT]` per column."""

    def __init__(self, spec: FrameSpec):
        cfg, K = spec.lm.cfg, spec.lm.cfg.num_codebooks
        self.ring, self.dq = spec.ring, cfg.dep_q
        self.delays = mx.array([[[d] for d in cfg.delays]], dtype=mx.int32)
        self.user = mx.array([[[k > cfg.dep_q] for k in range(K)]])  # streams the user's codebooks fill
        self.columns = mx.array([[list(range(spec.ring))]], dtype=mx.int32)
        initial = [cfg.text_initial_token_id] + [cfg.initial_token_id] * cfg.n_q
        self.initial = mx.array([initial], dtype=mx.int32)
        self.delays_row = mx.array([cfg.delays], dtype=mx.int32)
        self.out_delays = mx.array([[[d] for d in cfg.delays[: 1 + cfg.dep_q]]], dtype=mx.int32)
        self.max_delay = cfg.max_delay

    def write_user(self, tokens: mx.array, user: mx.array, step: mx.array) -> mx.array:
        """The user's codebook j written `delay_j` columns ahead of `step`."""
        hit = (self.columns == (step + self.delays) % self.ring) & self.user
        values = mx.pad(user, [(0, 0), (1 + self.dq, 0)])[:, :, None]
        return mx.where(hit, values, tokens)

    def inputs(self, tokens: mx.array, step: mx.array) -> mx.array:
        """`[B, K]`: column `step` of every stream, or its initial token while `step <= delay`."""
        column = mx.take(tokens, step % self.ring, axis=2)
        return mx.where(step <= self.delays_row, self.initial, column)

    def write_generated(self, tokens: mx.array, generated: list[mx.array], step: mx.array) -> mx.array:
        """This step's text and audio tokens (`[B]` each) at column `step + 1`, fed back next step."""
        new = mx.stack(generated, axis=1)[:, :, None]  # [B, 1 + dq, 1]
        head = mx.where(self.columns == (step + 1) % self.ring, new, tokens[:, : 1 + self.dq])
        return mx.concatenate([head, tokens[:, 1 + self.dq :]], axis=1)

    def output(self, tokens: mx.array, step: mx.array) -> mx.array:
        """`[B, 1 + dq]`: the generated streams' tokens of frame `step - max_delay`."""
        read = (step + 1 - self.max_delay + self.out_delays) % self.ring
        return mx.take_along_axis(tokens[:, : 1 + self.dq], read, axis=2)[:, :, 0]


def moshi_frame(
    spec: FrameSpec,
    tokens: mx.array,
    kv: list[mx.array],
    key: mx.array,
    step: mx.array,
    slot: mx.array,
    filled: mx.array | None,
    user: mx.array,
    forced: mx.array | None,
) -> tuple[mx.array, list[mx.array], mx.array, mx.array, list[mx.array]]:
    """Runs frame `step` (int32 scalar array): every `temporal_stage`, then every `depth_stage`.

    Args:
        spec: Model, samplers and ring size.
        tokens: Token ring `[B, K, CT]`; column `p % CT` of stream k holds its token for step p.
        kv: Temporal keys and values as `empty_kv` lays them out: `[keys_0, values_0, keys_1, ...]`,
            each `[B, Hkv, S, Dh]`, or `[kv_0, kv_1, ...]`, keys|values `[B, 2 Hkv, S, Dh]`.
        key: Random key; split into one key per sampler call, the first part is carried on.
        step: Index of this frame (drives the ring, the initial tokens and RoPE).
        slot: Buffer slot the keys/values of this step are written to.
        filled: Slots written after this step's write (masks the unwritten ones); None when
            every slot holds a key (a full ring).
        user: The user's codebooks `[B, n_q - dep_q]`.
        forced: `[B, 1 + dep_q]` tokens replacing sampled ones where not `ungenerated_token_id`, or
            None (nothing forced; a smaller graph)
            (`[B, 2 + dep_q]` with `spec.text_choice`: the last column is the text forced when the
            sampler draws `text_choice`).

    Returns:
        (tokens, kv, key, out, extra): the updated state, `[B, 1 + dep_q]` tokens of frame
        `step - max_delay` (meaningful once `step >= max_delay`) and the extra heads'
        probabilities of this step (`[B', extra_heads_dim]` each; none without extra heads).
    """
    temporal, depth = frame_stages(spec)
    carry: dict = {"tokens": tokens, "key": key, "user": user, "forced": forced, "filled": filled}
    new_kv: list[mx.array] = []
    per = kv_buffers_per_layer(spec, kv)
    for layers in temporal:
        carry, chunk = temporal_stage(spec, layers, carry, kv[per * layers.start : per * layers.stop], step, slot)
        new_kv += chunk
    key, extra = carry.pop("key"), carry.pop("extra")
    for steps in depth:
        carry = depth_stage(spec, steps, carry, step)
    return carry["tokens"], new_kv, key, carry["out"], extra


# The lean (CPU) frame runs as several compiled graphs: this many temporal layers each, then this
# many depformer layer steps each. MLX's CPU scheduler lets the calling thread dispatch only about 50
# nodes ahead of the worker thread that runs the kernels, so a stage's dispatch returns when its
# work is nearly done, and the worker waits while the next graph is built: about 1 us per node
# (measured on the bench's micro config: 2 temporal layers, 48 nodes, build in about 0.05 ms; one
# whole depformer codebook, 140 nodes, took 0.13-0.15 ms, longer than the worker needed for the
# last nodes of the stage before, and left it idle 0.05 ms per codebook; the two graphs of before,
# temporal transformer then depformer, took 0.77 and 0.84 ms of an 8.8 ms frame).
TEMPORAL_STAGE_LAYERS = 2
DEPTH_STAGE_LAYERS = 2
# The fused-kernel (GPU) frame's stages: None (the default) runs the temporal transformer, then the
# depformer, as one graph each; a number cuts them as above (`benchmarks/lmgen_7b_device.py` tries it).
FUSED_TEMPORAL_STAGE_LAYERS: int | None = None
FUSED_DEPTH_STAGE_LAYERS: int | None = None


def frame_stages(spec: FrameSpec) -> tuple[list[range], list[range]]:
    """The frame's stages: ranges of temporal layers (`temporal_stage`), then of depformer layer
    steps (`depth_stage`: step `k * L + j` is layer j of codebook k). The lean frame has small stages
    (`TEMPORAL_STAGE_LAYERS`, `DEPTH_STAGE_LAYERS`); the fused one `FUSED_TEMPORAL_STAGE_LAYERS` and
    `FUSED_DEPTH_STAGE_LAYERS`, by default the temporal transformer and the depformer whole."""
    n, dq = len(spec.lm.transformer.layers), spec.lm.cfg.dep_q
    steps = dq * len(spec.lm.depformer.layers) if dq else 0
    if is_lean(spec):
        layers, depth = TEMPORAL_STAGE_LAYERS, DEPTH_STAGE_LAYERS
    else:
        layers, depth = FUSED_TEMPORAL_STAGE_LAYERS or n, FUSED_DEPTH_STAGE_LAYERS or max(steps, 1)
    return _chunks(n, layers), _chunks(steps, depth) or [range(0)]


def _chunks(n: int, size: int) -> list[range]:
    """`range(n)` cut into ranges of `size` (the last one shorter)."""
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


def temporal_stage(
    spec: FrameSpec, layers: range, carry: dict, kv: list[mx.array], step: mx.array, slot: mx.array
) -> tuple[dict, list[mx.array]]:
    """Temporal layers `layers` of frame `step`, on their KV buffers `kv` (keys, values per layer;
    this step's go to slot `slot`). The stage from layer 0 starts the frame from `carry` =
    {tokens, key, user, forced, filled} (see `moshi_frame`); the one ending at the last layer
    samples the text, and leaves {tokens, key, forced, hidden `[B', D]`, text `[B]`, audio_keys
    (the depformer samplers' `[dep_q, 2]`), extra}. Returns (carry, updated buffers)."""
    lm = spec.lm
    if layers.start == 0:
        carry = _start(spec, carry, step, kv[0])
    ops = _ops(spec)
    x, mask, rotations = carry["x"], carry["mask"], carry["rotations"]
    new_kv, per = [], len(kv) // len(layers)  # this stage's layers' buffers, 1 or 2 each
    for n, i in enumerate(layers):
        cross = None if spec.cross_kv is None else spec.cross_kv[i]
        x, buffers = lm.transformer.layers[i].step_into(
            x, kv[per * n : per * (n + 1)], step, slot, mask, ops, cross, rotations
        )
        new_kv += buffers
    carry = {**carry, "x": x}
    return (_text(spec, carry) if layers.stop == len(lm.transformer.layers) else carry), new_kv


def _start(spec: FrameSpec, carry: dict, step: mx.array, buffer: mx.array) -> dict:
    """The user's tokens into the ring, the random keys of the frame's samplers, the first layer's
    input `x` `[B', D]` and what every layer shares: the attention `mask` over the slots of a KV
    buffer like `buffer` and the RoPE `rotations` (see `temporal_stage`)."""
    lm, cfg = spec.lm, spec.lm.cfg
    ring = _Ring(spec)
    tokens = ring.write_user(carry["tokens"], carry["user"], step)
    inputs = ring.inputs(tokens, step)

    keys = mx.random.split(carry["key"], 2 + cfg.dep_q)
    key, text_key = _unstack_keys(keys[:2])

    # One position, as [B, D]. On the CPU backend every graph node costs a dispatch:
    # `StepOps(lean=True)` and RoPE as one matrix product per layer (where exact, see
    # `spec.rope_product`) replace the many nodes fast.rope, rms_norm and attention expand to there.
    tcfg = cfg.transformer
    ops = _ops(spec)
    x = embed_step(lm, inputs)
    if spec.cfg_coef != 1.0:  # torch repeats the input tokens; their embeddings are the same
        x = mx.concatenate([x, x])
    if spec.sum_condition is not None:
        x = x + spec.sum_condition[:, 0].astype(x.dtype)
    if tcfg.positional_embedding == "sin":
        x = x + sin_embedding(step, 1, x.shape[-1], tcfg.max_period, x.dtype)[0]
    filled = carry["filled"]
    size = buffer.shape[2]
    mask = None if filled is None else (mx.arange(size) < filled)[None, :]
    if ops.lean_attention(lm.transformer.layers[0].self_attn):
        mask = attention_bias(mask, (x.shape[0], tcfg.num_heads, 1, size), buffer.dtype)
    rotations = None
    if tcfg.positional_embedding == "rope" and ops.lean and spec.rope_product:
        rotations = rope_rotations(step, tcfg.head_dim, tcfg.max_period, tcfg.num_heads, tcfg.num_kv_heads)
    return {"tokens": tokens, "key": key, "forced": carry["forced"], "text_key": text_key,
            "audio_keys": keys[2:], "x": x, "mask": mask, "rotations": rotations}


def _text(spec: FrameSpec, carry: dict) -> dict:
    """The text token of the temporal transformer's output `carry["x"]` (sampled, or forced), and
    the extra heads' probabilities."""
    lm, cfg = spec.lm, spec.lm.cfg
    forced, B = carry["forced"], carry["tokens"].shape[0]
    ops = _ops(spec)
    hidden = ops.norm(lm.out_norm, carry["x"])
    text_logits = _guided(ops.linear(lm.text_linear, hidden), spec.cfg_coef, B)

    text = spec.text_sampler(text_logits.astype(mx.float32), carry["text_key"])
    sampled = text
    if forced is not None:
        forced_text = forced[:, 0]
        if spec.text_choice is not None:
            forced_text = mx.where(text == spec.text_choice, forced[:, -1], forced_text)
        text = mx.where(forced_text != cfg.ungenerated_token_id, forced_text, text)
    # Extra heads (STT's end of speech) on every row of the normed hidden state, as torch
    # `step_with_extra_heads` (2B rows under CFG).
    extra = [p[:, 0] for p in lm.extra_head_probs(hidden[:, None])]
    if spec.text_choice is not None:
        extra.append(sampled)  # what the sampler drew, before forcing: the state machine reads it
    return {"tokens": carry["tokens"], "key": carry["key"], "forced": forced, "hidden": hidden, "text": text,
            "audio_keys": carry["audio_keys"], "extra": extra}


def depth_stage(spec: FrameSpec, steps: range, carry: dict, step: mx.array) -> dict:
    """Depformer layer steps `steps` of frame `step`: step `k * L + j` runs layer j (of L) for
    codebook k, after the codebook's input (j = 0) and before its sampler (j = L - 1). The stage from
    step 0 starts from the temporal stages' carry {tokens, forced, hidden, text, audio_keys} (without
    key and extra); the one ending at the last step writes this step's tokens into the ring and
    leaves {tokens, out `[B, 1 + dep_q]`} (see `moshi_frame`)."""
    lm, cfg = spec.lm, spec.lm.cfg
    dq, B = cfg.dep_q, carry["tokens"].shape[0]
    forced = carry["forced"]
    layers = lm.depformer.layers if dq else []  # STT has no depformer
    if steps.start == 0:
        carry = {"tokens": carry["tokens"], "forced": forced, "hidden": carry["hidden"],
                 "keys": _unstack_keys(carry["audio_keys"]) if dq else [], "out": [carry["text"]],
                 "dkv": [[] for _ in layers]}
    ops = _ops(spec)
    ungen = cfg.ungenerated_token_id
    hidden, out_tokens, y = carry["hidden"], list(carry["out"]), carry.get("y")
    dkv = [list(pieces) for pieces in carry["dkv"]]  # per layer, this frame's keys|values so far
    for k, j in (divmod(i, len(layers)) for i in steps):
        if j == 0:
            prev = out_tokens[-1]
            prev_in = mx.concatenate([prev, prev]) if spec.cfg_coef != 1.0 else prev
            # Without forcing, every token here was sampled (>= 0): no zero-token mask.
            emb = _embed_one(lm.depformer_table(k), prev_in, sampled=forced is None)
            y = ops.linear(lm.depformer_in[cfg.depformer_in_index(k)], hidden, emb)
        bias = None
        if ops.lean_attention(layers[j].self_attn):  # zero bias of this codebook's window
            rows, heads, window = y.shape[0], layers[j].cfg.num_heads, layers[j].frame_window(k)
            bias = mx.array([[[[0.0] * window]] * heads] * rows, dtype=y.dtype)  # a constant, not a node
        y = layers[j].step_in_frame(y, dkv[j], k, ops, bias)
        if j == len(layers) - 1:
            logits = _guided(ops.linear(lm.linears[k], y), spec.cfg_coef, B)
            tok = spec.audio_sampler(logits.astype(mx.float32), carry["keys"][k])
            if forced is not None:
                tok = mx.where(forced[:, 1 + k] != ungen, forced[:, 1 + k], tok)
            out_tokens.append(tok)
    if steps.stop < dq * len(layers):
        return {**carry, "out": out_tokens, "dkv": dkv, "y": y}
    # Generated tokens are fed back at the next step; the output is frame step - max_delay.
    ring = _Ring(spec)
    tokens = ring.write_generated(carry["tokens"], out_tokens, step)
    return {"tokens": tokens, "out": ring.output(tokens, step)}


def _unstack_keys(keys: mx.array) -> list[mx.array]:
    """The rows of `[n, 2]` random keys, in few graph nodes (indexing takes two per key)."""
    return split_ones(keys.reshape(-1), keys.shape[0])


# `mx.split` makes one graph node of at most this many pieces; more become one slice node each.
_SPLIT_PIECES = 10


def split_ones(a: mx.array, n: int, axis: int = 0) -> list[mx.array]:
    """`mx.split(a, n, axis)` (`n` equal pieces) in the fewest graph nodes: pieces in groups
    that one split node makes, instead of a slice node each past ten."""
    if n <= _SPLIT_PIECES:
        return mx.split(a, n, axis=axis)
    groups = -(-n // _SPLIT_PIECES)
    per, size = -(-n // groups), a.shape[axis] // n
    bounds = list(range(per, n, per))
    pieces: list[mx.array] = []
    for group, start in zip(mx.split(a, [b * size for b in bounds], axis=axis), [0] + bounds):
        pieces += split_ones(group, min(per, n - start), axis)
    return pieces


def empty_kv(spec: FrameSpec, rows: int, dtype: mx.Dtype) -> list[mx.array]:
    """The temporal KV buffers of a new stream, with no slots yet: in the lean (CPU) frame one
    keys|values buffer `[rows, 2 Hkv, 0, Dh]` per layer, whose slice update writes both at once (one
    kernel fewer per layer; the attention reads views of it), else keys and values apart,
    `[rows, Hkv, 0, Dh]` each, as the fused attention kernels of GPUs take them."""
    tcfg, n = spec.lm.cfg.transformer, len(spec.lm.transformer.layers)
    if is_lean(spec):
        return [mx.zeros((rows, 2 * tcfg.num_kv_heads, 0, tcfg.head_dim), dtype=dtype) for _ in range(n)]
    return [mx.zeros((rows, tcfg.num_kv_heads, 0, tcfg.head_dim), dtype=dtype) for _ in range(2 * n)]


def kv_buffers_per_layer(spec: FrameSpec, kv: list[mx.array]) -> int:
    """How many of the buffers `kv` (see `empty_kv`) each temporal layer has: 1 or 2."""
    return len(kv) // len(spec.lm.transformer.layers)


def _ops(spec: FrameSpec) -> StepOps:
    """How the frame computes: `spec.linear`, lean on the CPU backend unless `spec.lean` says (see `StepOps`)."""
    return StepOps(spec.linear, lean=is_lean(spec))


def is_lean(spec: FrameSpec) -> bool:
    """Whether the frame computes for the CPU backend (`spec.lean`, else the default device)."""
    return mx.default_device().type == mx.cpu if spec.lean is None else spec.lean


def embed_step(lm: Lm, tokens: mx.array) -> mx.array:
    """`lm.embed` of one position's `[B, K]` tokens, `[B, D]`: plain tables are read with one gather
    each (zero tokens masked in the sum) instead of the per-stream graph `ScaledEmbedding` builds."""
    tables = [lm.text_emb, *lm.emb]
    if not all(_plain(t) for t in tables):
        return lm.embed(tokens[:, :, None])[:, 0]
    K = len(tables)
    index = split_ones(mx.maximum(tokens, 0), K, axis=1)  # [B, 1] each
    zero = split_ones((tokens == ZERO_TOKEN)[:, :, None], K, axis=1)  # [B, 1, 1] each
    parts = [mx.where(z, mx.array(0, t.weight.dtype), t.weight[i]) for t, i, z in zip(tables, index, zero)]
    x = None
    for e in parts[1:] + parts[:1]:  # audio streams first, then text: `lm.embed`'s order of sums
        x = e if x is None else x + e
    return x[:, 0]


def _embed_one(table: nn.Module, tokens: mx.array, sampled: bool = False) -> mx.array:
    """`table(tokens)` of `[B]` tokens, `[B, D]`: for a plain table, two nodes fewer than the
    module's own call (`embed_with_zero_token`), which serves any token shape; one node for
    `sampled` tokens (never the zero token, never negative)."""
    if not _plain(table):
        return table(tokens)
    if sampled:
        return table.weight[tokens]
    return mx.where(tokens[:, None] == ZERO_TOKEN, mx.array(0, table.weight.dtype), table.weight[mx.maximum(tokens, 0)])


def _plain(table: nn.Module) -> bool:
    """A `ScaledEmbedding` that is a plain table (no low rank, demux or quantization)."""
    return type(table) is ScaledEmbedding and "low_rank" not in table and "out1" not in table


def _guided(logits: mx.array, cfg_coef: float, B: int) -> mx.array:
    """Classifier-free guidance of `[2B, V]` logits (torch `LMGen`); `logits` itself when `cfg_coef == 1`."""
    if cfg_coef == 1.0:
        return logits
    cond, null = logits[:B], logits[B:]
    return null + (cond - null) * cfg_coef
