"""`moshi-mlx run` and `Conversation`: a file in, Moshi's voice and text out, end to end; every input
and output checked before any work; errors mid-run keep what was produced."""

from __future__ import annotations

import io
import os
import stat
import wave
from pathlib import Path

import numpy as np
import pytest
from conftest import require
from tiny_model import tiny_model_dir

from moshi_mlx.audio.conversation import Conversation
from moshi_mlx.audio.io import read_audio, resample, write_wav
from moshi_mlx.audio.run_file import FileRun
from moshi_mlx.cli.main import main
from moshi_mlx.cli.progress import ProgressBar
from moshi_mlx.files import normal_mode
from moshi_mlx.sampling import SamplingParams

SPEECH = str(Path(__file__).resolve().parent / "assets" / "speech_24k.wav")
FRAMES = -(-int(2.5 * 24000) // 1920)  # the question's length, rounded up to whole 80 ms frames


@pytest.fixture(scope="module")
def question(tmp_path_factory):
    """2.5 s of speech at 16 kHz stereo: run must resample and downmix it."""
    import sphn

    pcm = read_audio(SPEECH)[: int(2.5 * 24000)]
    path = tmp_path_factory.mktemp("q") / "question.wav"
    mono16k = resample(pcm, 24000, 16000)
    sphn.write_wav(str(path), np.stack([mono16k, mono16k]), 16000)
    return path


@pytest.fixture(scope="module")
def full_answer(question, tmp_path_factory):
    """A complete run with seed 1 into folders that do not exist yet: (wav, text file, printed text, stderr)."""
    out = tmp_path_factory.mktemp("full")
    wav, txt = out / "voice" / "answer.wav", out / "text" / "answer.txt"
    capture = pytest.MonkeyPatch()
    stdout, stderr = io.StringIO(), io.StringIO()
    capture.setattr("sys.stdout", stdout)
    capture.setattr("sys.stderr", stderr)
    try:
        main(["run", str(question), str(wav), "--model", str(tiny_model_dir()), "--seed", "1", "--text-out", str(txt)])
    finally:
        capture.undo()
    return wav, txt, stdout.getvalue(), stderr.getvalue()


def test_run_writes_aligned_answer_and_text(full_answer):
    wav, txt, printed, errors = full_answer
    answer = read_audio(wav)
    assert answer.shape == (FRAMES * 1920,)  # time-aligned: the input's length in whole frames
    assert np.abs(answer).max() > 1e-3  # Mimi decoded something, not silence
    assert txt.read_text() == printed and printed.strip()
    assert errors == ""  # no progress bar when stderr is not a terminal
    assert stat.S_IMODE(os.stat(wav).st_mode) == stat.S_IMODE(os.stat(txt).st_mode) == normal_mode()


def answer(conv: Conversation, question: Path, out: Path) -> tuple[np.ndarray, str]:
    pieces: list[str] = []
    assert FileRun(question, out).run(conv, on_text=pieces.append) is None
    return read_audio(out), "".join(pieces)


def test_reset_replays_a_conversation_exactly(question, tmp_path):
    require("rustymimi")
    conv = Conversation.from_pretrained(tiny_model_dir(), "rust", sampling=SamplingParams(seed=3))
    first, text1 = answer(conv, question, tmp_path / "a.wav")
    conv.reset()
    second, text2 = answer(conv, question, tmp_path / "b.wav")
    # Same tokens, hence the same text; rustymimi's multi-threaded decoder may reorder fp32 sums.
    assert text1 == text2 and np.abs(first - second).max() < 1e-4
    # A different seed gives a different answer, so the equality above is not vacuous.
    other = Conversation.from_pretrained(tiny_model_dir(), "rust", sampling=SamplingParams(seed=4))
    third, _ = answer(other, question, tmp_path / "c.wav")
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


def test_conversation_rejects_wrong_frame_sizes():
    conv = Conversation.from_pretrained(tiny_model_dir(), "mlx")
    with pytest.raises(ValueError, match="expected a frame of 1920 samples, got 1000"):
        conv.step(np.zeros(1000, dtype=np.float32))


# --- Check before working: one line, exit 2, nothing written, before any model is loaded ---

CASES = {
    # name: (argv after "run" with {d} = a fresh folder, expected message part)
    "missing input": (["{d}/missing.wav", "{d}/out.wav"], "missing.wav: no such file"),
    "input is a folder": (["{d}/adir", "{d}/out.wav"], "adir: is a folder, not an audio file"),
    "input is not audio": (["{d}/notes.txt", "{d}/out.wav"], "notes.txt: cannot decode audio"),
    "output is a folder": (["{speech}", "{d}/adir"], "adir: is a folder; give a file name for the answer"),
    "output is the input": (["{d}/q.wav", "{d}/sub/../q.wav"], "is the input file; refusing to overwrite it"),
    "text is the input": (["{d}/q.wav", "{d}/out.wav", "--text-out", "{d}/q.wav"], "is the input file"),
    "text and answer share a path": (["{speech}", "{d}/o.wav", "--text-out", "{d}/o.wav"], "given for both"),
    "text under a file": (["{speech}", "{d}/out.wav", "--text-out", "{d}/notes.txt/a.txt"], "notes.txt is a file, not a folder"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_inputs_and_outputs_fail_in_one_line_before_loading(case, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "adir").mkdir()
    (tmp_path / "sub").mkdir()
    (tmp_path / "notes.txt").write_text("not audio")
    write_wav(tmp_path / "q.wav", read_audio(SPEECH)[:4800])
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    argv, expected = CASES[case]
    argv = [a.format(d=tmp_path, speech=SPEECH) for a in argv]
    # Without --model the default repo would be downloaded: failing first proves the order of checks.
    model = [] if case == "missing input" else ["--model", str(tmp_path / "no-model")]
    with pytest.raises(SystemExit) as e:
        main(["run", *argv, *model])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("moshi-mlx run: error: ") and err.count("\n") == 1 and expected in err
    assert "no-model" not in err and ".tmp" not in err
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before  # nothing written or changed


# --- Errors mid-run keep the answer so far ---


def wav_frames(path: Path) -> int:
    with wave.open(str(path)) as w:
        assert w.getframerate() == 24000 and w.getnchannels() == 1 and w.getnframes() % 1920 == 0
        return w.getnframes() // 1920


def failing_step(monkeypatch, after: int, error: Exception) -> None:
    """The LM step fails after `after` frames (`lm_step`: run calls it with or without overlap)."""
    step = Conversation.lm_step
    calls = [0]

    def fails(self, codes):
        calls[0] += 1
        if calls[0] > after:
            raise error
        return step(self, codes)

    monkeypatch.setattr(Conversation, "lm_step", fails)


def test_an_error_mid_run_keeps_the_answer_so_far(question, full_answer, tmp_path, capsys, monkeypatch):
    failing_step(monkeypatch, 10, OSError(28, "No space left on device"))
    wav, txt = tmp_path / "a.wav", tmp_path / "a.txt"
    with pytest.raises(SystemExit) as e:
        main(["run", str(question), str(wav), "--model", str(tiny_model_dir()), "--seed", "1", "--text-out", str(txt)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"moshi-mlx run: stopped by an error at frame 10 of {FRAMES} (0.80 s")
    assert err.rstrip().endswith("No space left on device")
    # Moshi's voice lags its input by the LM's max_delay (1 step here): 9 frames answered, aligned
    # with the input's first 9 frames, the same samples as the complete run's first 9 frames.
    assert "holds the answer's first 9 frames (0.72 s)" in err and wav_frames(wav) == 9
    full = read_audio(full_answer[0])
    assert np.abs(read_audio(wav) - full[: 9 * 1920]).max() < 1e-3
    assert full_answer[1].read_text().startswith(txt.read_text().rstrip("\n"))


def test_a_bug_mid_run_keeps_its_traceback_and_the_output(question, tmp_path, capsys, monkeypatch):
    failing_step(monkeypatch, 5, RuntimeError("a bug"))
    wav = tmp_path / "a.wav"
    with pytest.raises(RuntimeError, match="a bug"):
        main(["run", str(question), str(wav), "--model", str(tiny_model_dir())])
    assert "stopped by an error at frame 5" in capsys.readouterr().err
    assert wav_frames(wav) == 4


def test_progress_bar_shows_frames_rtf_and_eta():
    out = io.StringIO()
    bar = ProgressBar(total=100, seconds_per_item=0.08, stream=out)
    bar.start -= 2.0  # 2 s for 25 frames (2.0 s of audio): RTF 1.00, 75 frames left take 6 s
    bar.update(25, force=True)
    line = out.getvalue().split("\r\x1b[K")[-1]
    assert "25/100 frames" in line and "RTF 1.00" in line and "ETA 0:06" in line and line.startswith("[##")
    bar.line("some text")
    assert "\r\x1b[Ksome text\n\r\x1b[K[##" in out.getvalue()  # cleared, printed above, redrawn
