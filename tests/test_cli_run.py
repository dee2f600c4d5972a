"""`moshi-mlx run` and `Conversation`: a file in, Moshi's voice and text out, end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from moshi_mlx.audio.conversation import Conversation
from moshi_mlx.sampling import SamplingParams
from moshi_mlx.audio.io import read_audio, write_wav
from moshi_mlx.audio.run_file import run_file
from moshi_mlx.cli.main import main
from tiny_model import tiny_model_dir

SPEECH = str(Path(__file__).resolve().parent / "assets" / "speech_24k.wav")


@pytest.fixture(scope="module")
def question(tmp_path_factory):
    """2.5 s of speech at 16 kHz stereo: run must resample and downmix it."""
    pcm = read_audio(SPEECH)[: int(2.5 * 24000)]
    import sphn

    from moshi_mlx.audio.io import resample

    path = tmp_path_factory.mktemp("q") / "question.wav"
    mono16k = resample(pcm, 24000, 16000)
    sphn.write_wav(str(path), np.stack([mono16k, mono16k]), 16000)
    return path


def test_run_writes_aligned_answer_and_text(question, tmp_path, capsys):
    out = tmp_path / "answer.wav"
    text_out = tmp_path / "answer.txt"
    main(["run", str(question), str(out), "--model", str(tiny_model_dir()), "--seed", "1", "--text-out", str(text_out)])
    answer = read_audio(out)
    frames = -(-int(2.5 * 24000) // 1920)
    assert answer.shape == (frames * 1920,)
    assert np.abs(answer).max() > 1e-3  # Mimi decoded something, not silence
    printed = capsys.readouterr().out
    assert text_out.read_text().strip() == printed.strip()


def test_reset_replays_a_conversation_exactly(question, tmp_path):
    conv = Conversation.from_pretrained(tiny_model_dir(), "rust", sampling=SamplingParams(seed=3))
    first, text1 = run_file(conv, question, tmp_path / "a.wav")
    conv.reset()
    second, text2 = run_file(conv, question, tmp_path / "b.wav")
    # Same tokens, hence the same text; rustymimi's multi-threaded decoder may reorder fp32 sums.
    assert text1 == text2 and np.abs(first - second).max() < 1e-5
    # A different seed gives a different answer, so the equality above is not vacuous.
    other = Conversation.from_pretrained(tiny_model_dir(), "rust", sampling=SamplingParams(seed=4))
    third, _ = run_file(other, question, tmp_path / "c.wav")
    assert np.abs(first - third).max() > 1e-2


def test_mlx_mimi_backend_runs_and_resets():
    conv = Conversation.from_pretrained(tiny_model_dir(), "mlx", sampling=SamplingParams(seed=0))
    speech = read_audio(SPEECH)[: 6 * 1920].reshape(6, 1920)
    first = [conv.step(frame) for frame in speech]
    conv.reset()
    second = [conv.step(frame) for frame in speech]
    assert first[0].pcm is None and all(r.pcm.shape == (1920,) for r in first[1:])
    for a, b in zip(first[1:], second[1:]):
        assert a.text_token == b.text_token and np.array_equal(a.pcm, b.pcm)


def test_bad_inputs_fail_in_one_line_without_output(tmp_path, capsys):
    out = tmp_path / "answer.wav"
    with pytest.raises(SystemExit) as e:
        main(["run", str(tmp_path / "missing.wav"), str(out), "--model", str(tiny_model_dir())])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("moshi-mlx run: error: ") and "missing.wav: no such file" in err and "\n" not in err
    assert not out.exists()
    with pytest.raises(SystemExit):
        main(["run", SPEECH, str(out), "--model", str(tmp_path / "no-model")])
    assert "no-model" in capsys.readouterr().err and not out.exists()


def test_conversation_rejects_wrong_frame_sizes():
    conv = Conversation.from_pretrained(tiny_model_dir(), "mlx")
    with pytest.raises(ValueError, match="expected a frame of 1920 samples, got 1000"):
        conv.step(np.zeros(1000, dtype=np.float32))


def test_write_wav_used_by_run_is_atomic(tmp_path):
    write_wav(tmp_path / "x.wav", np.zeros(1920, dtype=np.float32))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.wav"]
