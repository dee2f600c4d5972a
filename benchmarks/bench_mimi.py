"""Mimi streaming speed: encode_step + decode_step ms per 80 ms frame, ours (MLX) vs rustymimi vs torch.

The implementations run interleaved frame by frame in one process, on the random-weight fixture
(built by tests/fixtures/make_mimi_fixture.py, cached in the temp dir). Usage, from the repository
root (so that `tests` is importable):
    python -m benchmarks.bench_mimi [--frames 20] [--no-torch]
"""

from __future__ import annotations

import argparse
import time

import mlx.core as mx
import numpy as np

from tests import mimi_reference as ref


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--no-torch", action="store_true")
    args = parser.parse_args()
    import torch

    pcm = ref.speech(args.frames)
    ours, rust = ref.ours(), ref.rust_tokenizer()
    tmodel = None if args.no_torch else ref.torch_mimi()
    times: dict[str, list[float]] = {"mlx": [], "rust": [], "torch": []}
    ours.reset()
    rust.reset()
    with torch.no_grad(), (tmodel.streaming(1) if tmodel is not None else _null()):
        for t in range(args.frames):
            chunk = np.ascontiguousarray(pcm[..., t * ref.FRAME : (t + 1) * ref.FRAME])
            t0 = time.perf_counter()
            out = ours.decode_step(ours.encode_step(chunk))
            mx.eval(out)
            times["mlx"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            rust.decode_step(rust.encode_step(chunk))
            times["rust"].append(time.perf_counter() - t0)
            if tmodel is not None:
                t0 = time.perf_counter()
                tmodel.decode(tmodel.encode(torch.from_numpy(chunk)))
                times["torch"].append(time.perf_counter() - t0)
    print(f"Mimi encode_step+decode_step, {args.frames} frames of 80 ms (first frame excluded as warm-up)")
    for name, ts in times.items():
        if len(ts) > 1:
            ms = 1e3 * np.array(ts[1:])
            print(f"  {name:6s} median {np.median(ms):8.1f} ms/frame   mean {ms.mean():8.1f}   min {ms.min():8.1f}")


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


if __name__ == "__main__":
    main()
