"""Live transcription: `Transcriber.live_words` over audio arriving in chunks of any size gives exactly
the words and times `words` gives for the whole file (same padding, same frames); `transcribe --mic`
records the (virtual PulseAudio) microphone for --duration seconds and transcribes it."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import unavailable

import pulse_devices
from moshi_mlx.audio.io import read_audio
from moshi_mlx.audio.transcribe import Transcriber
from moshi_mlx.weights.pretrained import load_pretrained
from moshi_mlx.weights.tiny_family import make_tiny_stt

pulse_server = pulse_devices.pulse_server


@pytest.fixture(scope="module")
def stt(tmp_path_factory):
    if shutil.which("espeak-ng") is None:
        unavailable("espeak-ng", "espeak-ng is not installed")
    root = tmp_path_factory.mktemp("live")
    speech = root / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(speech), "Hello, this is a live test."], check=True)
    return make_tiny_stt(root / "stt"), speech


def test_live_words_equal_file_words(stt):
    folder, speech = stt
    pretrained = load_pretrained(folder, "mlx")
    pcm = read_audio(speech)
    transcriber = Transcriber(pretrained.lm, pretrained.mimi, pretrained.tokenizer)
    whole = list(transcriber.words(pcm))
    rng = np.random.default_rng(0)
    cuts = np.cumsum(rng.integers(100, 3000, size=len(pcm) // 100))
    chunks = [c for c in np.split(pcm, cuts[cuts < len(pcm)]) if len(c)]
    live = list(transcriber.live_words(iter(chunks)))
    assert whole and live == whole


@pytest.mark.audio
@pytest.mark.usefixtures("pulse_server")
def test_mic_transcribes_for_duration(stt):
    folder, speech = stt
    proc = subprocess.Popen(
        [sys.executable, "-m", "moshi_mlx.cli.main", "transcribe", "--mic", "--duration", "3", "--model", str(folder),
         "--mimi-backend", "mlx", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pulse_devices.play_into_microphone(speech)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "Listening" in err
    assert out.strip().startswith("{") or out.strip().startswith("[")
