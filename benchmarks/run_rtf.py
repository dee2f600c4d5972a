"""Real-time factor of `moshi-mlx run` (the `FileRun` it drives), Mimi overlapping the LM or not,
in one process, interleaved round by round, on the same Conversation (reset between runs):

    python -m benchmarks.make_bench_model /tmp/small-moshi --config small
    python -m benchmarks.run_rtf /tmp/small-moshi --seconds 4 --rounds 2

RTF is processing time over the input's duration (above 1: slower than real time), as `run`
reports it. Prints one line per run and the median RTF of each mode. Run from the repository root.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np

from moshi_mlx.audio.conversation import Conversation
from moshi_mlx.audio.io import read_audio, write_wav
from moshi_mlx.audio.run_file import FileRun
from moshi_mlx.sampling import SamplingParams

SPEECH = Path(__file__).resolve().parents[1] / "tests" / "assets" / "speech_24k.wav"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="model folder (e.g. from benchmarks.make_bench_model)")
    p.add_argument("--seconds", type=float, default=4.0, help="input length (the test speech, repeated)")
    p.add_argument("--rounds", type=int, default=2, help="runs per mode, interleaved")
    p.add_argument("--mimi-backend", default=None, help="rust or mlx (default: rust when installed)")
    p.add_argument("--dtype", default=None, help="LM dtype (default: the checkpoint's)")
    args = p.parse_args()

    from moshi_mlx.weights.common import parse_dtype

    conv = Conversation.from_pretrained(args.model, args.mimi_backend, parse_dtype(args.dtype), SamplingParams(seed=0))
    conv.warmup()
    speech = read_audio(str(SPEECH))
    n = int(args.seconds * 24000)
    while speech.size < n:
        speech = np.concatenate([speech, speech])
    rtfs: dict[str, list[float]] = {"sequential": [], "overlapped": []}
    with tempfile.TemporaryDirectory() as tmp:
        question = Path(tmp) / "q.wav"
        write_wav(question, speech[:n], 24000)
        for r in range(args.rounds):
            for mode in rtfs:
                conv.reset()
                job = FileRun(question, Path(tmp) / f"{mode}.wav")
                job.run(conv, overlap=mode == "overlapped")
                rtfs[mode].append(job.rtf())
                print(f"round {r + 1} {mode:>10}: {job.steps} frames in {job.finished - job.started:.1f} s, RTF {job.rtf():.3f}",
                      flush=True)
    for mode, values in rtfs.items():
        print(f"{mode:>10}: median RTF {statistics.median(values):.3f} over {len(values)} runs")


if __name__ == "__main__":
    main()
