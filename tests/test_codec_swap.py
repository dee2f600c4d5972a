"""`RustMimi` streams past rustymimi's position limit by swapping instances, without a glitch.

A rotary table of 64 positions (rustymimi's `max_seq_len`; 8192 by default) makes one instance die
at frame 32, so a few swaps fit in 80 frames: every 20 frames, warm-up 10, crossfade 2 (the three
tests on those streams are `slow`: about 30 s on 2 cores).
"""

from __future__ import annotations

import functools

import mlx.core as mx
import numpy as np
import pytest
from conftest import require

require("torch")
require("moshi")
require("rustymimi")
import mimi_reference as ref

from moshi_mlx.models.codec import RustMimi

MAX_SEQ_LEN, SWAP_EVERY, WARMUP, CROSSFADE = 64, 20, 10, 2
FRAMES = 80  # swaps at frames 30, 50, 70
SWAPS = (30, 50, 70)
# Measured with these settings (benchmarks/mimi_swap.py figures are for the defaults): codes after
# each swap agree 100 % with the unswapped stream; the decoded audio differs by <= 1.8 % of its
# peak over the crossfades. The bounds leave room for near-ties and other speech.
MIN_AGREEMENT = 0.95
MAX_REL_DIFF = 0.05


def varied_speech(frames: int, seed: int = 0) -> np.ndarray:
    """The speech asset tiled with a random gain, shift and sign per repetition `[1, 1, frames * 1920]`."""
    base = ref.speech(96)[0, 0]
    rng = np.random.default_rng(seed)
    parts = [
        np.roll(base, int(rng.integers(len(base)))) * rng.uniform(0.4, 1.0) * rng.choice([-1.0, 1.0])
        for _ in range(frames // 96 + 1)
    ]
    return np.ascontiguousarray(np.concatenate(parts)[: frames * ref.FRAME][None, None], dtype=np.float32)


def frame(pcm: np.ndarray, t: int) -> np.ndarray:
    return pcm[..., t * ref.FRAME : (t + 1) * ref.FRAME]


# The tests on `streams()` share its 80 frames through two rustymimi instances: about 30 s.
slow_streams = pytest.mark.slow


@functools.cache
def streams() -> dict[str, np.ndarray | dict]:
    """The unswapped stream (one instance with room for all frames) and the swapping one, both sides;
    the swapping decoder is fed the unswapped codes so that its own swaps are judged alone."""
    pcm = varied_speech(FRAMES)
    plain = RustMimi(ref.fixture_path(), swap_every=FRAMES, warmup=0, crossfade=0)
    swapping = RustMimi(
        ref.fixture_path(), swap_every=SWAP_EVERY, warmup=WARMUP, crossfade=CROSSFADE, max_seq_len=MAX_SEQ_LEN
    )
    codes, out, s_codes, s_out = [], [], [], []
    for t in range(FRAMES):
        codes.append(np.array(plain.encode_step(frame(pcm, t))))
        out.append(np.array(plain.decode_step(codes[-1])))
        c = swapping.encode_step(mx.array(frame(pcm, t)))
        assert c.shape == (1, 8, 1) and c.dtype == mx.int32
        s_codes.append(np.array(c))
        y = swapping.decode_step(codes[-1])
        assert y.shape == (1, 1, ref.FRAME) and y.dtype == mx.float32
        s_out.append(np.array(y))
    cat = lambda xs: np.concatenate(xs, -1)
    return {
        "codes": cat(codes),
        "pcm": cat(out)[0, 0],
        "s_codes": cat(s_codes),
        "s_pcm": cat(s_out)[0, 0],
        "swaps": dict(swapping.swaps),
    }


@slow_streams
def test_one_instance_dies_at_the_limit_the_swap_avoids():
    import rustymimi

    tok = rustymimi.Tokenizer(str(ref.fixture_path()), num_codebooks=8, max_seq_len=MAX_SEQ_LEN)
    pcm = varied_speech(MAX_SEQ_LEN // 2)
    for t in range(MAX_SEQ_LEN // 2):
        tok.encode_step(np.ascontiguousarray(frame(pcm, t)))
    with pytest.raises(Exception, match="narrow invalid args"):
        tok.encode_step(np.ascontiguousarray(frame(pcm, 0)))
    assert streams()["swaps"] == {"enc": len(SWAPS), "dec": len(SWAPS)}  # and FRAMES > 32 went through


@slow_streams
def test_codes_after_each_swap_agree_with_the_unswapped_stream():
    s = streams()
    first = SWAPS[0]
    np.testing.assert_array_equal(s["s_codes"][..., :first], s["codes"][..., :first])
    for a, b in zip(SWAPS, SWAPS[1:] + (FRAMES,)):
        assert (s["s_codes"][..., a:b] == s["codes"][..., a:b]).mean() >= MIN_AGREEMENT, (a, b)


@slow_streams
def test_decoded_audio_has_no_jump_at_the_swaps():
    s = streams()
    x, y = s["pcm"], s["s_pcm"]
    fade = (SWAPS[0] - CROSSFADE) * ref.FRAME
    np.testing.assert_array_equal(y[:fade], x[:fade])  # untouched until the first crossfade
    normal = np.abs(np.diff(x)).max()  # the largest sample step the unswapped stream takes
    peak = np.abs(x).max()
    for at in SWAPS:
        lo, hi = (at - CROSSFADE) * ref.FRAME, (at + 1) * ref.FRAME
        assert np.abs(np.diff(y[lo - 1 : hi])).max() <= normal, at
        assert np.abs(y[lo:hi] - x[lo:hi]).max() <= MAX_REL_DIFF * peak, at


def test_reset_and_batch_calls_keep_streaming_within_the_limit():
    mimi = RustMimi(
        ref.fixture_path(), swap_every=SWAP_EVERY, warmup=WARMUP, crossfade=CROSSFADE, max_seq_len=MAX_SEQ_LEN
    )
    pcm = varied_speech(40)
    first = [np.array(mimi.encode_step(frame(pcm, t))) for t in range(5)]
    codes = mimi.encode(pcm[..., : 4 * ref.FRAME])  # a fresh instance: the stream goes on untouched
    assert codes.shape == (1, 8, 4) and codes.dtype == mx.int32
    assert mimi.decode(codes).shape == (1, 1, 4 * ref.FRAME)
    more = [np.array(mimi.encode_step(frame(pcm, t))) for t in range(5, 10)]
    plain = RustMimi(ref.fixture_path(), swap_every=SWAP_EVERY, warmup=WARMUP, max_seq_len=MAX_SEQ_LEN)
    np.testing.assert_array_equal(
        np.concatenate(first + more, -1),
        np.concatenate([np.array(plain.encode_step(frame(pcm, t))) for t in range(10)], -1),
    )
    mimi.reset()  # rustymimi's reset keeps its positions used: the swap schedule still counts them
    for t in range(40):
        mimi.encode_step(frame(pcm, t))
    assert mimi.swaps["enc"] == 2
    with pytest.raises(ValueError, match="at most 32 frames in one call"):
        mimi.encode(varied_speech(33))


@pytest.mark.parametrize(("every", "warmup", "crossfade"), [(0, 10, 2), (30, 10, 11), (25, 10, 2)])
def test_swap_parameters_are_checked(every, warmup, crossfade):
    with pytest.raises(ValueError, match=r"swap_every \+ warmup <= 32"):
        RustMimi(ref.fixture_path(), swap_every=every, warmup=warmup, crossfade=crossfade, max_seq_len=MAX_SEQ_LEN)


# The real limit (4096 frames at rustymimi's default table) with default swap settings and flat
# memory is covered end to end by tests/test_run_long.py (7 minutes through `moshi-mlx run --mimi-backend rust`).
