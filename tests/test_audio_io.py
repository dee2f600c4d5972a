"""Audio file I/O: resampling accuracy, downmixing, atomic writes, clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from moshi_mlx.audio.io import AudioError, read_audio, resample, to_mono, write_wav


@pytest.mark.parametrize("rate", [8000, 16000, 44100, 48000])
def test_resample_keeps_a_tone_in_place(rate):
    t = np.arange(rate) / rate
    y = resample(np.sin(2 * np.pi * 440 * t).astype(np.float32), rate, 24000)
    assert len(y) == 24000
    ref = np.sin(2 * np.pi * 440 * np.arange(24000) / 24000)
    assert np.abs(y - ref)[500:-500].max() < 1e-4  # no delay, no gain change


def test_resample_removes_content_above_new_nyquist():
    t = np.arange(48000) / 48000
    y = resample(np.sin(2 * np.pi * 20000 * t), 48000, 24000)
    assert np.abs(y)[500:-500].max() < 1e-3


def test_read_downmixes_and_resamples(tmp_path):
    import sphn

    t = np.arange(32000) / 16000
    left = 0.5 * np.sin(2 * np.pi * 300 * t)
    sphn.write_wav(str(tmp_path / "st.wav"), np.stack([left, -0.2 * left]).astype(np.float32), 16000)
    pcm = read_audio(tmp_path / "st.wav")
    assert pcm.dtype == np.float32 and pcm.shape == (48000,)
    ref = 0.2 * np.sin(2 * np.pi * 300 * np.arange(48000) / 24000)
    assert np.abs(pcm - ref)[500:-500].max() < 2e-3  # 16-bit quantisation of the file


def test_write_is_atomic_and_round_trips(tmp_path):
    pcm = (0.3 * np.sin(np.arange(4800) / 7)).astype(np.float32)
    path = write_wav(tmp_path / "out" / "x.wav", pcm)
    assert [p.name for p in path.parent.iterdir()] == ["x.wav"]
    assert np.abs(read_audio(path) - pcm).max() < 1e-4


def test_clear_errors(tmp_path):
    with pytest.raises(AudioError, match="no such file"):
        read_audio(tmp_path / "missing.wav")
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF....not audio")
    with pytest.raises(AudioError, match=rf"^{bad}: cannot decode audio"):
        read_audio(bad)
    with pytest.raises(AudioError, match=r"got shape \(1, 2, 3\)"):
        to_mono(np.zeros((1, 2, 3)))
