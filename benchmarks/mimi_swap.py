"""Mimi's memory and rustymimi's instance swap, measured on the random speech-fitted fixture.

    python -m benchmarks.mimi_swap depth [--at 1100] [--warmups 0,25,125,250,500,750,1000,1100]
        torch moshi: a Mimi started fresh W frames before frame `at`, against the continuing stream,
        per stage (SEANet, each transformer layer, latent, codes; decoder likewise): where the
        memory beyond the 10 s attention window lives.
    python -m benchmarks.mimi_swap swap [--frames 600] [--swap-at 300] [--warmups 50,125,250,375]
        rustymimi: encode/decode with one swap against the unswapped stream: codes agreement after
        the swap, the sample jump at the boundary and a short-time spectral distance, each next to
        the stream's normal frame-to-frame variation; per-frame time around the swap.
    python -m benchmarks.mimi_swap lm [--frames 400] [--swap-every 150]
        the tiny LM through `Conversation` (rust backend), token statistics before/after swaps.
    python -m benchmarks.mimi_swap rss [--frames 5000]
        RSS of rustymimi encode+decode alone at frames 100, 600, ... with and without the swap.

Prefix with `nice -n 10` on a shared machine. Signals are the speech asset tiled with a random gain,
shift and sign per repetition (seeded), so that no two repetitions are identical.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from tests import mimi_reference as ref

FRAME = ref.FRAME


def long_speech(frames: int, seed: int = 0) -> np.ndarray:
    """`frames` frames of varied speech, float32 `[1, 1, frames * 1920]`."""
    base = ref.speech(96)[0, 0]
    rng = np.random.default_rng(seed)
    parts, n = [], 0
    while n < frames * FRAME:
        part = np.roll(base, int(rng.integers(len(base)))) * rng.uniform(0.4, 1.0) * rng.choice([-1.0, 1.0])
        parts.append(part)
        n += len(part)
    return np.ascontiguousarray(np.concatenate(parts)[: frames * FRAME][None, None], dtype=np.float32)


def rel(a: np.ndarray, b: np.ndarray) -> float:
    """Relative max-abs difference of `a` from the reference `b`."""
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


# ---------------------------------------------------------------------------------------------- depth
def _torch_run(model, pcm, start: int, stop: int, codes=None, decoder: bool = True) -> dict[str, np.ndarray]:
    """Streams frames [start, stop) through a fresh torch Mimi, returns per-stage outputs per frame."""
    import torch

    taps: dict[str, list] = {}

    def hook(name):
        return lambda mod, inp, out: taps.setdefault(name, []).append(out[0] if isinstance(out, tuple) else out)

    enc_layers = model.encoder_transformer.transformer.layers
    dec_layers = model.decoder_transformer.transformer.layers
    handles = [model.encoder.register_forward_hook(hook("enc seanet"))]
    handles += [layer.register_forward_hook(hook(f"enc layer {i}")) for i, layer in enumerate(enc_layers)]
    handles += [layer.register_forward_hook(hook(f"dec layer {i}")) for i, layer in enumerate(dec_layers)]
    lat, cds, pcm_out = [], [], []
    try:
        with torch.no_grad():
            with model.streaming(1):
                for t in range(start, stop):
                    x = model._encode_to_unquantized_latent(torch.from_numpy(pcm[..., t * FRAME : (t + 1) * FRAME]))
                    lat.append(x)
                    cds.append(model.quantizer.encode(x))
            with model.streaming(1):
                src = codes if codes is not None else torch.cat(cds, -1).numpy()
                for i in range(stop - start if decoder else 0):
                    pcm_out.append(model.decode(torch.from_numpy(np.ascontiguousarray(src[..., i : i + 1]))))
    finally:
        for h in handles:
            h.remove()
    out = {k: torch.cat(v, -1 if k == "enc seanet" else 1).numpy() for k, v in taps.items()}
    out["latent"] = torch.cat(lat, -1).numpy()
    out["codes"] = torch.cat(cds, -1).numpy()
    if pcm_out:
        out["pcm"] = torch.cat(pcm_out, -1).numpy()
    return out


def depth(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(1)
    model = ref.torch_mimi()
    at, span = args.at, args.span
    pcm = long_speech(at + span, args.seed)
    t0 = time.perf_counter()
    full = _torch_run(model, pcm, 0, at + span, decoder=args.decoder)
    print(f"continuing stream of {at + span} frames: {time.perf_counter() - t0:.0f} s")

    # Time axis per stage: SEANet/layers run at 25 Hz (2 steps per frame), latent/codes at 12.5 Hz.
    def window(name: str, arr: np.ndarray, first: int) -> np.ndarray:
        if name in ("latent", "codes"):
            return arr[..., at - first : at - first + span]
        if name == "pcm":
            return arr[..., (at - first) * FRAME : (at - first + span) * FRAME]
        if name == "enc seanet":
            return arr[..., 2 * (at - first) : 2 * (at - first + span)]
        return arr[:, 2 * (at - first) : 2 * (at - first + span)]

    # The decoder is fed the continuing stream's codes, so its figures isolate the decoder's own memory.
    full_codes = full["codes"]
    names = ["enc seanet"] + [f"enc layer {i}" for i in range(8)] + ["latent", "codes"]
    if args.decoder:
        names += [f"dec layer {i}" for i in range(8)] + ["pcm"]
    print(f"relative max-abs difference from the continuing stream over frames {at}..{at + span} (codes: agreement)")
    print("warm-up frames (s) | " + " | ".join(names))
    for w in args.warmups:
        w = min(w, at)
        part = _torch_run(
            model, pcm, at - w, at + span, codes=full_codes[..., at - w : at + span], decoder=args.decoder
        )
        row = []
        for name in names:
            a, b = window(name, part[name], at - w), window(name, full[name], 0)
            row.append(f"{(a == b).mean():.2f}" if name == "codes" else f"{rel(a, b):.1e}")
        print(f"{w} ({w * 0.08:.0f} s) | " + " | ".join(row), flush=True)


# ----------------------------------------------------------------------------------------------- swap
def stft_db(x: np.ndarray, win: int = 480, hop: int = 240) -> np.ndarray:
    """Log-magnitude spectrogram (dB), 20 ms Hann windows every 10 ms: `[frames, bins]`."""
    n = 1 + (len(x) - win) // hop
    frames = np.stack([x[i * hop : i * hop + win] for i in range(n)]) * np.hanning(win)
    return 20 * np.log10(np.abs(np.fft.rfft(frames, axis=-1)) + 1e-5)


def lsd(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Log-spectral distance (dB) between matching rows."""
    return np.sqrt(((a - b) ** 2).mean(-1))


def swap(args: argparse.Namespace) -> None:
    from moshi_mlx.models.codec import RustMimi

    path, n, at = ref.fixture_path(), args.frames, args.swap_at
    pcm = long_speech(n, args.seed)
    frames = [np.ascontiguousarray(pcm[..., t * FRAME : (t + 1) * FRAME]) for t in range(n)]
    plain = RustMimi(path, swap_every=n, warmup=0, crossfade=0)  # never swaps within n frames
    codes = np.concatenate([np.array(plain.encode_step(f)) for f in frames], -1)
    out = np.concatenate([np.array(plain.decode_step(codes[..., t : t + 1])) for t in range(n)], -1)[0, 0]
    ref_spec = stft_db(out)
    hop = 240
    normal = lsd(ref_spec[1:], ref_spec[:-1])  # how much the spectrum moves in 10 ms anyway
    d = np.abs(np.diff(out))
    print(f"{n} frames, one swap at frame {at} (both sides); the unswapped stream is the reference")
    print(
        f"normal variation: |x[i]-x[i-1]| p99 {np.quantile(d, 0.99):.4f} max {d.max():.4f} (peak |x| "
        f"{np.abs(out).max():.3f}); spectral change per 10 ms: median {np.median(normal):.1f} dB, p90 "
        f"{np.quantile(normal, 0.9):.1f} dB"
    )
    print(
        "warm-up | codes agree: 2 s after swap, rest | added jump at swap boundaries | max |y-x| / peak | LSD around swap "
        "(median, max dB) | frame RMS change (dB) | step ms (normal, warm-up, swap)"
    )
    for w in args.warmups:
        for cf in args.crossfades:
            mimi = RustMimi(path, swap_every=at - w, warmup=w, crossfade=min(cf, w))
            got, ms = [], []
            for t, f in enumerate(frames):
                t0 = time.perf_counter()
                got.append(np.array(mimi.encode_step(f)))
                ms.append(time.perf_counter() - t0)
            got = np.concatenate(got, -1)
            y = []
            for t in range(n):  # decoder fed the reference codes: its own swap, isolated
                t0 = time.perf_counter()
                y.append(np.array(mimi.decode_step(codes[..., t : t + 1])))
                ms[t] += time.perf_counter() - t0
            y = np.concatenate(y, -1)[0, 0]
            assert mimi.swaps == {"enc": 1, "dec": 1}, mimi.swaps
            b = at * FRAME
            # The click a swap adds: the step of the difference signal at the frame boundaries it touches.
            e = y - out
            jump = max(abs(e[i] - e[i - 1]) for i in range(b - cf * FRAME, b + 1, FRAME))
            around = slice(max(0, (b - (cf + 1) * FRAME) // hop), (b + 2 * FRAME) // hop)
            dist = lsd(stft_db(y)[around], ref_spec[around])
            rms = lambda x: 20 * np.log10(np.sqrt((x.reshape(-1, FRAME) ** 2).mean(-1)) + 1e-9)
            level = np.abs(rms(y) - rms(out))[at - cf - 1 : at + 2].max()
            ms = np.array(ms) * 1e3
            print(
                f"{w} | {(got[..., at : at + 25] == codes[..., at : at + 25]).mean():.2f}, "
                f"{(got[..., at + 25 :] == codes[..., at + 25 :]).mean():.2f} | {jump:.4f} | "
                f"{np.abs(y - out).max() / np.abs(out).max():.3f} | {np.median(dist):.1f}, {dist.max():.1f} | "
                f"{level:.2f} | {np.median(ms[: at - w]):.0f}, {np.median(ms[at - w : at]):.0f}, "
                f"{ms[at - 1]:.0f} (crossfade {cf})",
                flush=True,
            )


# ------------------------------------------------------------------------------------------------- lm
def lm(args: argparse.Namespace) -> None:
    import tempfile

    from tests.fixtures.make_tiny_model import make_tiny_model

    from moshi_mlx.audio.conversation import Conversation
    from moshi_mlx.generate import LmGen
    from moshi_mlx.models.codec import RustMimi
    from moshi_mlx.sampling import SamplingParams
    from moshi_mlx.weights.pretrained import load_pretrained

    folder = Path(tempfile.mkdtemp(prefix="mimi_swap_")) / "tiny-moshi"
    model = load_pretrained(make_tiny_model(folder, mimi=ref.fixture_path()), "rust", None)
    pcm = long_speech(args.frames, args.seed)
    n, win = args.frames, args.window
    runs = {}
    for name, every in (("unswapped", n), ("swapped", args.swap_every)):
        sp = SamplingParams(seed=args.seed)  # the same sampling key in both runs
        gen = LmGen(model.lm, sp.text_sampler(), sp.audio_sampler(), seed=sp.seed)
        mimi = RustMimi(
            model.mimi.path,
            swap_every=every,
            warmup=min(args.warmup, every) if every < n else 0,
            crossfade=args.crossfade if every < n else 0,
        )
        conv = Conversation(gen, mimi)
        text = []
        for t in range(n):
            r = conv.step(pcm[0, 0, t * FRAME : (t + 1) * FRAME])
            if r.text_token is not None:
                text.append(r.text_token)
        runs[name] = (np.array(text), mimi.swaps)
    print(f"tiny LM, {n} frames, rust backend; swapped: every {args.swap_every} frames, warm-up {args.warmup}")
    for name, (text, swaps) in runs.items():
        rows = []
        for a in range(0, len(text), win):
            w = text[a : a + win]
            _, counts = np.unique(w, return_counts=True)
            p = counts / counts.sum()
            rows.append(f"{len(np.unique(w))}/{-(p * np.log2(p)).sum():.2f}")
        print(f"{name} (swaps {swaps}): per {win} frames distinct text tokens/entropy bits: " + " ".join(rows))
    a, b = runs["unswapped"][0], runs["swapped"][0]
    same = np.nonzero(a != b)[0]
    print(f"text tokens identical up to frame {same[0] if len(same) else len(a)} of {len(a)}")


# ------------------------------------------------------------------------------------------------ rss
def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def rss(args: argparse.Namespace) -> None:
    import rustymimi

    from moshi_mlx.models.codec import RustMimi

    path, n = ref.fixture_path(), args.frames
    pcm = long_speech(97, args.seed)
    checkpoints = sorted({100, 600, *args.at, n})
    for name in args.modes:
        if name == "plain":  # one rustymimi.Tokenizer, as before the swap existed
            tok = rustymimi.Tokenizer(str(path), num_codebooks=8, max_seq_len=2 * n + 2)
            enc, dec = tok.encode_step, tok.decode_step
        else:
            mimi = RustMimi(path)
            enc = lambda x: np.array(mimi.encode_step(x)).astype(np.uint32)
            dec = lambda c: np.array(mimi.decode_step(c))
        marks, t0 = [], time.perf_counter()
        for t in range(1, n + 1):
            x = np.ascontiguousarray(pcm[..., (t % 96) * FRAME : (t % 96 + 1) * FRAME])
            dec(np.ascontiguousarray(enc(x)))
            if t in checkpoints:
                marks.append(f"{t}: {rss_mb():.0f}")
        print(f"{name}: RSS MB at frame " + ", ".join(marks) + f" ({time.perf_counter() - t0:.0f} s)", flush=True)
        del enc, dec


def ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("depth")
    p.add_argument("--at", type=int, default=1100)
    p.add_argument("--span", type=int, default=25)
    p.add_argument("--decoder", action="store_true", help="also the decoder, fed the continuing stream's codes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmups", type=ints, default=[0, 25, 125, 250, 500, 750, 1000, 1100])
    p = sub.add_parser("swap")
    p.add_argument("--frames", type=int, default=600)
    p.add_argument("--swap-at", type=int, default=400)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmups", type=ints, default=[25, 125, 250])
    p.add_argument("--crossfades", type=ints, default=[0, 2])
    p = sub.add_parser("lm")
    p.add_argument("--frames", type=int, default=400)
    p.add_argument("--swap-every", type=int, default=100)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--crossfade", type=int, default=2)
    p.add_argument("--window", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("rss")
    p.add_argument("--frames", type=int, default=5000)
    p.add_argument("--at", type=ints, default=[1000, 2000, 3000, 4000])
    p.add_argument("--modes", type=lambda s: s.split(","), default=["swap", "plain"])
    p.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    {"depth": depth, "swap": swap, "lm": lm, "rss": rss}[args.cmd](args)


if __name__ == "__main__":
    main()
