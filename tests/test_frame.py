"""The compiled frame (`models.frame`, `LmGen`) is exact: equal to the same function run op by op
and to an independent op-by-op loop over `Lm.step`/`Lm.depformer_step` with cache objects, through
KV-buffer growth, ring wrap-around, sampling with keys, forced tokens and batch 2."""

from __future__ import annotations

from dataclasses import replace

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from moshi_mlx import generate
from moshi_mlx.cli.bench_worker import unevaluated_nodes
from moshi_mlx.config import LmConfig
from moshi_mlx.generate import LmGen
from moshi_mlx.models import frame, products
from moshi_mlx.models.frame import embed_step
from moshi_mlx.models.lm import Lm
from moshi_mlx.modules.quantized import QuantizedLinear
from moshi_mlx.modules.kv_cache import bucket_size, grow_buffers
from moshi_mlx.modules.transformer import FP32_SOFTMAX_MIN_KEYS, StepOps, attention_bias, lean_softmax
from moshi_mlx.sampling import make_sampler
from moshi_mlx.weights.quantize import quantize_lm

# Moshi's stream layout in miniature; the context (300) exceeds the first buffer bucket (128), so a
# run passes 128 -> 256 -> 300 slots, then wraps the ring.
CONFIG = dict(
    dim=32, text_card=64, n_q=4, dep_q=2, card=32, num_heads=2, num_layers=2, hidden_scale=4.125,
    context=300, gating="silu", norm="rms_norm_f32", positional_embedding="rope",
    depformer_dim=16, depformer_dim_feedforward=48, depformer_num_heads=1, depformer_num_layers=2,
    depformer_multi_linear=True, depformer_weights_per_step=True, depformer_pos_emb="none",
    delays=[0, 0, 1, 0, 1],
)
STEPS = 700


def model(**overrides) -> Lm:
    mx.random.seed(0)
    lm = Lm(LmConfig.from_kyutai_json({**CONFIG, **overrides}))
    mx.eval(lm.parameters())
    return lm


def user_codes(batch: int, steps: int = STEPS) -> np.ndarray:
    return np.random.default_rng(0).integers(0, CONFIG["card"], size=(batch, 2, steps)).astype(np.int32)


def forced_at(t: int, batch: int, dq: int) -> mx.array | None:
    """Every 7th step forces the text token (and codebook 1 of row 0): teacher forcing mid-stream."""
    if t % 7:
        return None
    f = np.full((batch, 1 + dq), -2, dtype=np.int32)
    f[:, 0] = t % 60
    f[0, 2] = t % 30
    return mx.array(f)


def run_gen(gen: LmGen, user: np.ndarray) -> np.ndarray:
    outs = []
    for t in range(user.shape[2]):
        out = gen.step(mx.array(user[:, :, t]), forced_at(t, user.shape[0], gen.lm.cfg.dep_q))
        if out is not None:
            outs.append(np.array(out))
    return np.stack(outs)


def run_reference(lm: Lm, user: np.ndarray, temp: float, seed: int) -> np.ndarray:
    """Op by op over cache objects (`Lm.step`, `Lm.depformer_step`): the same semantics as torch
    `LMGen` (which `test_generate.py` checks greedily), with the same key splits as `LmGen`."""
    cfg = lm.cfg
    B, dq, CT = user.shape[0], cfg.dep_q, cfg.max_delay + 2
    sample = make_sampler(temp, top_k=20, compile=False)
    cache, dcache = lm.make_cache(), lm.make_depformer_cache()
    ring = np.full((B, cfg.num_codebooks, CT), -2, dtype=np.int32)
    initial = np.array([cfg.text_initial_token_id] + [cfg.initial_token_id] * cfg.n_q, dtype=np.int32)
    key = mx.random.key(seed)
    outs = []
    for o in range(user.shape[2]):
        for j in range(cfg.n_q - dq):
            ring[:, 1 + dq + j, (o + cfg.delays[1 + dq + j]) % CT] = user[:, j, o]
        inputs = np.where(np.array([o <= d for d in cfg.delays])[None], initial[None], ring[:, :, o % CT])
        keys = mx.random.split(key, 2 + dq)
        key = keys[0]
        hidden, logits = lm.step(mx.array(inputs)[:, :, None], cache)
        forced = forced_at(o, B, dq)
        tok = sample(logits[:, 0].astype(mx.float32), keys[1])
        if forced is not None:
            tok = mx.where(forced[:, 0] != -2, forced[:, 0], tok)
        new = [tok]
        for c in dcache:
            c.reset()
        for k in range(dq):
            tok = sample(lm.depformer_step(k, tok, hidden, dcache).astype(mx.float32), keys[2 + k])
            if forced is not None:
                tok = mx.where(forced[:, 1 + k] != -2, forced[:, 1 + k], tok)
            new.append(tok)
        ring[:, : 1 + dq, (o + 1) % CT] = np.stack([np.array(t) for t in new], axis=1)
        if o + 1 > cfg.max_delay:
            outs.append(np.stack([ring[:, k, (o + 1 - cfg.max_delay + cfg.delays[k]) % CT] for k in range(1 + dq)], 1))
    return np.stack(outs)


def frame_formulation(gen: LmGen, lean: bool | None) -> LmGen:
    """`gen` with the frame's CPU formulation (`lean=True`) or the fused-kernel one GPUs use."""
    gen._spec = replace(gen._spec, lean=lean)
    gen.reset()  # rebuilds the graphs from the spec
    return gen


@pytest.mark.parametrize("lean,split,inexact", [(True, False, False), (True, True, False), (True, False, True),
                                                (False, False, False)],
                         ids=["cpu-formulation", "cpu-split-products", "cpu-blas-rounding-otherwise",
                              "gpu-formulation"])
@pytest.mark.parametrize("batch", [1, 2])
def test_compiled_frame_equals_op_by_op_through_growth_and_wrap(batch, lean, split, inexact, monkeypatch):
    if lean and not inexact and not split:  # one layer per stage: the frame is 2 + 4 graphs
        monkeypatch.setattr(frame, "TEMPORAL_STAGE_LAYERS", 1)
        monkeypatch.setattr(frame, "DEPTH_STAGE_LAYERS", 1)
    if split:  # every product with 2+ column blocks split across 3 CPU streams (`models.products`),
        # and depformer stages of 3 layer steps, which end in the middle of a codebook
        monkeypatch.setattr(frame, "DEPTH_STAGE_LAYERS", 3)
        monkeypatch.setattr(products, "SPLIT_MIN_WEIGHTS", 0)
        monkeypatch.setattr(generate, "cpu_cores", lambda: 3)
    if inexact:  # a BLAS whose products are not exact for RoPE nor the same in both layouts (OpenBLAS)
        monkeypatch.setattr(generate, "rope_product_is_exact", lambda *a: False)
        monkeypatch.setattr(products, "same_products", lambda *a: False)
        monkeypatch.setattr(frame, "rope_rotations", None)  # the frame must not build them
    assert_frame_exact(model(), batch, lean)


def test_gpu_formulation_in_stages_equals_op_by_op(monkeypatch):
    """The fused-kernel (GPU) frame cut into stages of one temporal layer and 3 depformer layer
    steps (ending mid-codebook), as the device benchmark's variants run it, stays exact."""
    monkeypatch.setattr(frame, "FUSED_TEMPORAL_STAGE_LAYERS", 1)
    monkeypatch.setattr(frame, "FUSED_DEPTH_STAGE_LAYERS", 3)
    lm = model()
    gen = frame_formulation(LmGen(lm), lean=False)
    assert [len(s) for s in frame.frame_stages(gen._spec)[0]] == [1] * len(lm.transformer.layers)
    assert_frame_exact(lm, 1, lean=False)


@pytest.mark.parametrize("positional_embedding", ["sin", "none"])
def test_gpu_formulation_without_rope_equals_op_by_op(positional_embedding):
    """The fused-kernel (GPU) frame of a temporal transformer without RoPE, whose keys and values
    are views of the projection written to their buffers apart, stays exact."""
    assert_frame_exact(model(positional_embedding=positional_embedding), 1, lean=False)


@pytest.mark.parametrize("lean", [True, False], ids=["cpu-formulation-split-products", "gpu-formulation"])
def test_quantized_frame_equals_op_by_op(lean, monkeypatch):
    """4-bit weights and bf16 activations, the products `QuantizedLinear` computes in fp32 on the CPU
    (split across 3 CPU streams in the CPU formulation). Every Linear is quantized, so no bf16
    product has a fused residual, which rounds once where the reference rounds twice. The GPU
    formulation then equals the independent reference; the CPU one's bf16 attention and norms do
    not (`test_cpu_formulation_pieces_equal_the_fused_ones`), so it is held to its op-by-op run."""
    if lean:
        monkeypatch.setattr(products, "SPLIT_MIN_WEIGHTS", 0)
        monkeypatch.setattr(generate, "cpu_cores", lambda: 3)
    lm = model(dim=64, hidden_scale=4.5, depformer_dim=32, depformer_dim_feedforward=96)  # widths of 32s
    lm.set_dtype(mx.bfloat16)
    quantize_lm(lm, 4, group_size=32)
    kinds = {type(m) for _, m in lm.named_modules()}
    assert QuantizedLinear in kinds and nn.Linear not in kinds
    assert_frame_exact(lm, 1, lean, against_reference=not lean)


def assert_frame_exact(lm: Lm, batch: int, lean: bool, against_reference: bool = True) -> None:
    """The compiled frame's sampled tokens equal the op-by-op frame's and `run_reference`'s."""
    user = user_codes(batch)
    sampled = dict(text_sampler=make_sampler(1.0, top_k=20), audio_sampler=make_sampler(1.0, top_k=20))
    compiled = run_gen(frame_formulation(LmGen(lm, batch_size=batch, seed=3, compiled=True, **sampled), lean), user)
    eager = run_gen(frame_formulation(LmGen(lm, batch_size=batch, seed=3, compiled=False, **sampled), lean), user)
    assert compiled.shape == (STEPS - lm.cfg.max_delay, batch, 1 + lm.cfg.dep_q)
    assert np.array_equal(compiled, eager)
    if against_reference:
        reference = run_reference(lm, user, temp=1.0, seed=3)
        assert np.array_equal(compiled, reference), f"first difference at {np.argwhere(compiled != reference)[0]}"
    assert len(np.unique(compiled[:, :, 1])) > 10  # a real sampled stream, not a constant


@pytest.mark.parametrize("stage_layers,depth_steps", [(1, 1), (2, 2), (2, 3)],
                         ids=["one-layer-stages", "default-sizes", "depth-stages-across-codebooks"])
def test_moshi_frame_is_what_the_staged_step_runs(stage_layers, depth_steps, monkeypatch):
    """`frame.moshi_frame`, the frame as one pure function, gives what `LmGen.step` gives by
    running and compiling its stages one at a time: tokens, KV buffers, key and output. Depformer
    stages of 3 layer steps (of 2 codebooks x 2 layers) end in the middle of a codebook."""
    monkeypatch.setattr(frame, "TEMPORAL_STAGE_LAYERS", stage_layers)
    monkeypatch.setattr(frame, "DEPTH_STAGE_LAYERS", depth_steps)
    lm = model()
    gen = LmGen(lm, make_sampler(1.0, top_k=20), make_sampler(1.0, top_k=20), seed=5)
    user = user_codes(1, 8)
    for t in range(6):  # past the delays
        gen.step(mx.array(user[:, :, t]))
    slot, filled = gen._buffers_for(gen.offset)
    tokens, kv, key, out, _ = frame.moshi_frame(
        gen._spec, gen.tokens, list(gen.kv), gen.key, mx.array(gen.offset, dtype=mx.int32),
        mx.array([slot], dtype=mx.int32), None if filled is None else mx.array(filled, dtype=mx.int32),
        mx.array(user[:, :, 6]), None,
    )
    got = gen.step(mx.array(user[:, :, 6]))
    assert np.array_equal(np.array(out), np.array(got))
    assert np.array_equal(np.array(tokens), np.array(gen.tokens))
    assert np.array_equal(np.array(key), np.array(gen.key))
    assert all(mx.array_equal(a, b).item() for a, b in zip(kv, gen.kv, strict=True))


def test_kv_buffers_grow_by_buckets_and_stop_at_the_context():
    lm = model()
    gen = LmGen(lm, make_sampler(0.0), make_sampler(0.0))
    per_slot = gen.kv_nbytes  # zero-length buffers before the first step
    assert per_slot == 0
    sizes = []
    for t in range(STEPS):
        gen.step(mx.zeros((1, 2), dtype=mx.int32))
        sizes.append(gen.kv[0].shape[2])
    assert sizes[0] == bucket_size(1, 300) == 128
    assert sorted(set(sizes)) == [128, 256, 300]
    assert sizes[-1] == 300 and sizes.index(300) == 256  # grows only until the ring is full
    gen.reset()
    assert gen.offset == 0 and gen.kv_nbytes == 0


@pytest.mark.parametrize("stage_layers", [1, 2])
@pytest.mark.parametrize("read_every", [1, 3])
def test_kv_buffers_are_written_in_place(read_every, stage_layers, monkeypatch):
    """Between bucket growths a step writes its key/value into the buffers it was given: a buffer
    still referenced elsewhere would be copied whole, every step (1.5 GB a step for the 7B's
    full window). Also for a caller that reads the tokens only every few frames (`generate`
    reads none until the end): the previous frame's kernels, still queued, hold the buffers too,
    so `LmGen.step` waits for that frame before it starts the next. With one temporal layer per
    stage (`frame.TEMPORAL_STAGE_LAYERS`), each stage's buffers too."""
    monkeypatch.setattr(frame, "TEMPORAL_STAGE_LAYERS", stage_layers)
    lm = model()
    gen = LmGen(lm, make_sampler(0.0), make_sampler(0.0))
    address = lambda a: np.asarray(a).__array_interface__["data"][0]  # noqa: E731
    seen = []
    for _ in range(40 // read_every):  # 40 steps, within the first bucket (128 slots)
        for _ in range(read_every):
            gen.step(mx.zeros((1, 2), dtype=mx.int32))
        mx.eval(gen.tokens, *gen.kv)
        seen.append([address(a) for a in gen.kv])
    assert all(s == seen[0] for s in seen), "the KV buffers moved: their slice updates copied them"


def test_kv_growth_frees_each_old_buffer_at_once_outside_the_cache():
    """A bucket growth copies the buffers one at a time, freeing each old one before the next copy
    and leaving none in MLX's buffer cache: the peak is the grown buffers plus one old one (a full
    conversation's peak resident memory held up to 32 MB of old buffers in the cache before)."""
    bufs = [mx.random.normal((1, 2, 256, 64)) for _ in range(8)]  # 128 KiB each
    mx.eval(bufs)
    before = [np.array(b) for b in bufs]
    limit = mx.set_cache_limit(1 << 30)  # a cache that would hold every old buffer
    try:
        mx.clear_cache()
        mx.reset_peak_memory()
        active = mx.get_active_memory()
        grow_buffers(bufs, 512)
        peak, cached = mx.get_peak_memory(), mx.get_cache_memory()
    finally:
        assert mx.set_cache_limit(limit) == 1 << 30  # the caller's limit is back
    old, new = 128 << 10, 256 << 10
    assert cached == 0
    assert peak <= active + 8 * (new - old) + new + old, f"{(peak - active) >> 10} KiB over the buffers"
    for b, a in zip(bufs, before):
        assert b.shape == (1, 2, 512, 64)
        assert np.array_equal(np.array(b[:, :, :256]), a) and not np.array(b[:, :, 256:]).any()


def test_a_model_without_context_keeps_growing():
    lm = model(context=None)
    gen = LmGen(lm, make_sampler(0.0), make_sampler(0.0))
    for _ in range(300):
        gen.step(mx.zeros((1, 2), dtype=mx.int32))
    assert gen.kv[0].shape[2] == 512


def test_the_env_switch_selects_the_op_by_op_path(monkeypatch):
    lm = model()
    monkeypatch.setenv("MOSHI_MLX_COMPILE", "0")
    assert LmGen(lm).compiled is False
    monkeypatch.setenv("MOSHI_MLX_COMPILE", "1")
    assert LmGen(lm).compiled is True
    assert LmGen(lm, compiled=False).compiled is False


def test_reset_reads_changed_weights():
    lm = model()
    gen = LmGen(lm, make_sampler(0.0), make_sampler(0.0))
    user = user_codes(1, 20)
    before = run_gen(gen, user)
    lm.text_linear.weight = -lm.text_linear.weight  # different weights: different greedy text
    gen.reset()
    after = run_gen(gen, user)
    fresh = run_gen(LmGen(lm, make_sampler(0.0), make_sampler(0.0)), user)
    assert np.array_equal(after, fresh) and not np.array_equal(after[:, :, 0], before[:, :, 0])


@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16])
def test_cpu_formulation_pieces_equal_the_fused_ones(dtype):
    """`StepOps(lean=True)` and the frame's embedding give what the fused kernels and `Lm.embed` give:
    RMSNorm and the embeddings bit for bit, attention (scale and mask folded into one addmm) to
    rounding."""
    lm = model()
    lm.set_dtype(dtype)
    lean = StepOps(lean=True)
    norm = lm.transformer.layers[0].norm1
    norm.weight = mx.random.normal(norm.weight.shape).astype(dtype)
    x = (4 * mx.random.normal((3, norm.weight.shape[0]))).astype(dtype)
    assert mx.array_equal(lean.norm(norm, x), norm(x))

    attn = lm.transformer.layers[0].self_attn
    B, H, S, Dh = 2, attn._heads, 9, attn._head_dim
    q, k, v = (mx.random.normal((B, H, n, Dh)).astype(dtype) for n in (1, S, S))
    mask = (mx.arange(S) < 6)[None, :]
    for m in (mask, None):
        bias = attention_bias(m, (B, H, 1, S), dtype)
        got, want = lean.attend(attn, q, k, v, bias), attn.attend_one(q, k, v, m)
        assert mx.allclose(got, want, atol=1e-6 if dtype == mx.float32 else 2e-2).item()

    tokens = mx.array(np.random.default_rng(1).integers(-1, 30, size=(2, lm.cfg.num_codebooks)), dtype=mx.int32)
    assert mx.array_equal(embed_step(lm, tokens), lm.embed(tokens[:, :, None])[:, 0])


@pytest.mark.parametrize("dtype", [mx.bfloat16, mx.float16])
def test_lean_softmax_of_long_rows_equals_the_softmax_of_their_dtype(dtype):
    """`lean_softmax` computes rows of `FP32_SOFTMAX_MIN_KEYS` keys or more in fp32 (MLX's CPU
    softmax of bf16/fp16 is scalar): the values are those of `mx.softmax(..., precise=True)` in
    the rows' own dtype, masked keys included."""
    for keys in (FP32_SOFTMAX_MIN_KEYS - 1, FP32_SOFTMAX_MIN_KEYS, 128, 300, 3000):
        for scale in (0.5, 4.0, 30.0):
            scores = (scale * mx.random.normal((16, 4, 1, keys), key=mx.random.key(keys))).astype(dtype)
            filled = mx.random.randint(1, keys + 1, (16, 1, 1, 1), key=mx.random.key(1))
            scores = mx.where(mx.arange(keys) < filled, scores, -mx.inf)
            got, want = lean_softmax(scores), mx.softmax(scores, axis=-1, precise=True)
            assert got.dtype == dtype and mx.array_equal(got, want).item(), (keys, scale)


def test_split_ones_equals_mx_split_in_fewer_nodes():
    """`frame.split_ones` gives `mx.split`'s pieces; past ten pieces it builds fewer graph nodes
    than `mx.split`, which then makes one slice node per piece."""
    for n in (1, 2, 9, 10, 11, 17, 21, 33):
        a = mx.arange(2 * 3 * n).reshape(2, 3 * n)
        got, want = frame.split_ones(a, n, axis=1), mx.split(a, n, axis=1)
        built, plain = unevaluated_nodes(got), unevaluated_nodes(want)  # the bench's count, before evaluating
        assert built <= plain and (n <= 10 or built < plain - n // 2)
        assert len(got) == n and all(g.shape == w.shape and mx.array_equal(g, w).item() for g, w in zip(got, want))
    lm = model(n_q=16, dep_q=8, delays=[0] * 17)  # Moshi's 17 streams
    tokens = mx.array(np.random.default_rng(2).integers(-1, 30, size=(2, 17)), dtype=mx.int32)
    assert mx.array_equal(embed_step(lm, tokens), lm.embed(tokens[:, :, None])[:, 0])


def test_cpu_relayout_keeps_every_weight_and_frees_the_old_buffers(tmp_path):
    """On the CPU formulation the product-only fp32 projections are stored `[in, out]` row-major
    (faster for the CPU's BLAS): same values and shapes everywhere, no second copy held, the
    projections that take a residual and the text head left as they were, and the model still
    saves what it loaded."""
    lm = model()
    before = {k: np.array(v) for k, v in tree_flatten(lm.parameters())}
    active = mx.get_active_memory()
    frame_formulation(LmGen(lm), lean=True)
    after = dict(tree_flatten(lm.parameters()))
    assert after.keys() == before.keys()
    for k, v in after.items():
        assert v.shape == before[k].shape and np.array_equal(np.array(v), before[k]), k
    layout = lambda w: "[in, out]" if np.asarray(w).flags["F_CONTIGUOUS"] else "[out, in]"  # noqa: E731
    layer, depth = lm.transformer.layers[0], lm.depformer.layers[1]

    def laid(name: str) -> str:  # where this BLAS sums both layouts alike (MLX's bundled one; not OpenBLAS)
        w = mx.array(before[name + ".weight"])
        return "[in, out]" if products.same_products(w, mx.contiguous(w.T).T) else "[out, in]"

    assert layout(layer.self_attn.in_projs[0].weight) == laid("transformer.layers.0.self_attn.in_projs.0")
    assert layout(depth.gating[1].linear_in.weight) == laid("depformer.layers.1.gating.1.linear_in")
    assert layout(lm.linears[0].weight) == laid("linears.0")
    assert layout(layer.self_attn.out_projs[0].weight) == layout(layer.gating.linear_out.weight) == "[out, in]"
    assert layout(lm.depformer_in[0].weight) == layout(lm.text_linear.weight) == "[out, in]"
    assert mx.get_active_memory() <= active + 16 * 1024  # the old buffers are gone (KV buffers are empty)
    frame_formulation(LmGen(lm), lean=True)  # already laid out: nothing copied
    assert mx.get_active_memory() <= active + 16 * 1024
    lm.save_weights(str(tmp_path / "w.safetensors"))
    saved = mx.load(str(tmp_path / "w.safetensors"))
    assert all(np.array_equal(np.array(saved[k]), before[k]) for k in before)
