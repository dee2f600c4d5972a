"""`translate --mic`: a tiny Hibiki-like model (make-tiny --kind hibiki) translates the virtual PulseAudio
microphone live to the virtual speaker for --duration seconds: it ends by itself with exit 0, reports its
frames, and the speaker receives the model's voice."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import unavailable

import pulse_devices
from moshi_mlx.weights.tiny_family import make_tiny_hibiki

pulse_server = pulse_devices.pulse_server
pytestmark = [pytest.mark.audio, pytest.mark.usefixtures("pulse_server")]


def test_translate_mic_to_speaker(tmp_path):
    if shutil.which("espeak-ng") is None:
        unavailable("espeak-ng", "espeak-ng is not installed")
    speech = tmp_path / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(speech), "Bonjour, comment allez-vous ?"], check=True)
    model = make_tiny_hibiki(tmp_path / "hibiki")
    recording = tmp_path / "speaker.raw"
    recorder = pulse_devices.record_speaker(recording)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moshi_mlx.cli.main", "translate", "--mic", "--duration", "4", "--model", str(model),
             "--mimi-backend", "mlx"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1.0)
        pulse_devices.play_into_microphone(speech)
        out, err = proc.communicate(timeout=180)
    finally:
        recorder.terminate()
        recorder.wait(timeout=10)
    assert proc.returncode == 0, err
    assert "Translating what the microphone hears" in err
    heard = np.fromfile(recording, dtype=np.float32)
    assert np.abs(heard).max() > 0.0  # the model's voice reached the speaker
