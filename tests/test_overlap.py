"""Mimi overlapping the LM (`audio.overlap.OverlappedSteps`, used by `run` and `chat`) gives the same
answer as one step after the other, with a fixed seed: same tokens, same audio."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from conftest import require
from tiny_model import tiny_model_dir

from moshi_mlx.audio.conversation import Conversation
from moshi_mlx.audio.duplex import DuplexLoop
from moshi_mlx.audio.io import read_audio
from moshi_mlx.audio.overlap import OverlappedSteps
from moshi_mlx.audio.run_file import FileRun
from moshi_mlx.sampling import SamplingParams
from moshi_mlx.weights.tiny import make_tiny_model

SPEECH = str(Path(__file__).resolve().parent / "assets" / "speech_24k.wav")
FRAMES = 10


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return read_audio(SPEECH)[: FRAMES * 1920].reshape(FRAMES, 1920)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """make-tiny's folder (small MLX Mimi: fast) for the MLX backend; the test fixture's full Mimi for rust."""
    return {"mlx": make_tiny_model(tmp_path_factory.mktemp("tiny") / "m"), "rust": None}


def conversation(models: dict, backend: str) -> Conversation:
    if backend == "rust":
        require("rustymimi")
        models["rust"] = models["rust"] or tiny_model_dir()
    return Conversation.from_pretrained(models[backend], backend, sampling=SamplingParams(seed=5))


@pytest.mark.parametrize("backend", ["mlx", pytest.param("rust", marks=pytest.mark.slow)])
def test_overlapped_steps_give_the_sequential_results(backend, speech, models):
    conv = conversation(models, backend)
    sequential = [conv.step(frame) for frame in speech]
    conv.reset()
    with OverlappedSteps(conv) as steps:
        steps.push(speech[0])
        overlapped = []
        for t in range(FRAMES):
            if t + 1 < FRAMES:
                steps.push(speech[t + 1])
            steps.step()
            overlapped += steps.ready()
        overlapped += steps.finish()
    assert len(overlapped) == FRAMES and conv.steps == FRAMES
    assert [r.text_token for r in overlapped] == [r.text_token for r in sequential]
    assert [r.text for r in overlapped] == [r.text for r in sequential]
    assert sequential[0].pcm is None and overlapped[0].pcm is None
    for a, b in zip(sequential[1:], overlapped[1:]):
        if backend == "mlx":
            assert np.array_equal(a.pcm, b.pcm)
        else:  # rustymimi's multi-threaded decoder may reorder fp32 sums (as on a replay)
            assert np.abs(a.pcm - b.pcm).max() < 1e-4


def test_file_run_output_is_the_same_with_and_without_overlap(tmp_path, models):
    question = tmp_path / "q.wav"
    from moshi_mlx.audio.io import write_wav

    write_wav(question, read_audio(SPEECH)[: FRAMES * 1920], 24000)
    conv = conversation(models, "mlx")
    outputs = []
    for overlap in (False, True):
        conv.reset()
        wav, txt = tmp_path / f"{overlap}.wav", tmp_path / f"{overlap}.txt"
        job = FileRun(question, wav, txt)
        assert job.run(conv, overlap=overlap) is None
        assert job.steps == FRAMES + conv.lm_gen.lm.cfg.max_delay and job.frames_written == FRAMES
        assert job.rtf() > 0
        outputs.append((wav.read_bytes(), txt.read_text()))
    assert outputs[0] == outputs[1]


def test_duplex_loop_overlapped_gives_the_sequential_audio_and_text(speech, models):
    conv = conversation(models, "mlx")
    sequential = [conv.step(frame) for frame in speech]
    conv.reset()
    conv.materialize()  # as chat does: arrays made on this thread are evaluated before the model thread runs
    texts: list[str] = []
    loop = DuplexLoop(conv, on_text=texts.append, max_input_backlog=100, max_output_backlog=100)
    loop.start()
    for frame in speech:
        loop.push_input(frame)
    deadline = time.time() + 60
    while loop.stats.frames_out < FRAMES - 1 and time.time() < deadline and loop.running:
        time.sleep(0.01)
    loop.stop()
    s = loop.stats
    assert s.frames_processed == FRAMES and s.frames_dropped_in == 0 and s.frames_out == FRAMES - 1
    out = loop.pull_output((FRAMES - 1) * 1920)
    assert np.array_equal(out, np.concatenate([r.pcm for r in sequential[1:]]))
    assert texts == [r.text for r in sequential if r.text]


def test_an_error_on_the_mimi_thread_reaches_the_caller(speech, models):
    conv = conversation(models, "mlx")

    def broken(codes):
        raise ValueError("decoder broke")

    conv.mimi.decode_step = broken
    steps = OverlappedSteps(conv)
    for frame in speech[:3]:
        steps.push(frame)
    with pytest.raises(ValueError, match="decoder broke"):
        for _ in range(3):
            steps.step()
        steps.finish()
    steps.close()
    with pytest.raises(RuntimeError, match="closed"):
        steps.push(speech[0])
