"""Audio file I/O: resampling accuracy, streaming equal to whole-file reading, downmixing,
progressive and atomic writes, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import unavailable

from moshi_mlx.audio.io import (
    AudioError,
    AudioReader,
    read_audio,
    resample,
    to_mono,
    write_wav,
)
from moshi_mlx.audio.resample import Resampler
from moshi_mlx.audio.wav import WavWriter


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


# --- Streaming: pieces equal the whole, memory independent of length ---


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 44100, 48000, 24000])
def test_streaming_resampler_equals_whole_signal_resample(rate):
    rng = np.random.default_rng(rate)
    x = rng.standard_normal(2 * rate + 77).astype(np.float32)
    stream = Resampler(rate, 24000)
    pieces, a = [], 0
    while a < len(x):  # pieces of random sizes, single samples included
        n = int(rng.choice([1, 7, 333, 4000]))
        pieces.append(stream.push(x[a : a + n]))
        a += n
    pieces.append(stream.flush())
    assert np.array_equal(np.concatenate(pieces), resample(x, rate, 24000))
    # flush() starts a new signal: the same input again gives the same output.
    assert np.array_equal(np.concatenate([stream.push(x), stream.flush()]), resample(x, rate, 24000))


def test_resampler_holds_a_bounded_buffer():
    stream = Resampler(44100, 24000)
    for _ in range(20):
        stream.push(np.zeros(4410, dtype=np.float32))
    assert len(stream._buffer) < 200  # a few dozen taps, not the 2 s pushed


def sox(tmp_path, name, *args) -> str:
    import shutil
    import subprocess

    if shutil.which("sox") is None:
        unavailable("sox", "sox is not installed")
    out = str(tmp_path / name)
    subprocess.run(["sox", "-n", *args, out, "synth", "1.3", "sine", "300", "sine", "700"], check=True)
    return out


@pytest.mark.parametrize(
    "name,args",
    [
        ("s16.wav", ["-r", "16000", "-c", "1", "-b", "16"]),
        ("s24_stereo.wav", ["-r", "44100", "-c", "2", "-b", "24"]),  # WAVE_FORMAT_EXTENSIBLE
        ("u8.wav", ["-r", "8000", "-c", "1", "-b", "8"]),
        ("s32.wav", ["-r", "24000", "-c", "2", "-b", "32", "-e", "signed-integer"]),
        ("f32.wav", ["-r", "48000", "-c", "1", "-e", "floating-point", "-b", "32"]),
        ("f64.wav", ["-r", "22050", "-c", "2", "-e", "floating-point", "-b", "64"]),
        ("s16.flac", ["-r", "16000", "-c", "2"]),  # not a wav: decoded whole by sphn
    ],
)
def test_streamed_reading_equals_sphns_decoder(tmp_path, name, args):
    import sphn

    path = sox(tmp_path, name, *args)
    data, rate = sphn.read(path)
    expected = resample(np.asarray(data, np.float32).mean(axis=0), rate, 24000)
    with AudioReader(path) as reader:
        assert reader.samples == len(expected)
        frames = np.stack(list(reader.frames(1920)))
    assert frames.shape == (-(-len(expected) // 1920), 1920)
    got = frames.reshape(-1)
    assert np.abs(got[: len(expected)] - expected).max() < 1e-6
    assert not got[len(expected) :].any()  # the last frame is padded with zeros
    assert np.array_equal(read_audio(path), got[: len(expected)])


def test_unfinished_wav_header_is_read_up_to_the_end_of_the_file(tmp_path):
    pcm = (0.5 * np.sin(np.arange(24000) / 9)).astype(np.float32)
    path = write_wav(tmp_path / "x.wav", pcm)
    raw = bytearray(path.read_bytes())
    raw[40:44] = b"\xff\xff\xff\xff"  # a recorder that never wrote the data size
    path.write_bytes(bytes(raw))
    assert np.abs(read_audio(path) - pcm).max() < 1e-4


def test_wav_writer_is_a_valid_wav_after_every_write(tmp_path):
    import wave

    path = tmp_path / "grow.wav"
    with WavWriter(path, 24000) as writer:
        for i in range(1, 4):
            writer.write(np.full(1920, 0.25, dtype=np.float32))
            with wave.open(str(path)) as w:  # read while the writer is still open
                assert w.getnframes() == 1920 * i and w.getframerate() == 24000 and w.getnchannels() == 1
    assert np.abs(read_audio(path) - 0.25).max() < 1e-4


def test_write_wav_gives_a_normal_file_mode(tmp_path):
    import os
    import stat

    from moshi_mlx.files import normal_mode

    path = write_wav(tmp_path / "x.wav", np.zeros(100, dtype=np.float32))
    assert stat.S_IMODE(os.stat(path).st_mode) == normal_mode()  # not mkstemp's 0600


def test_reader_errors_name_the_file(tmp_path):
    with pytest.raises(AudioError, match="is a folder"):
        AudioReader(tmp_path)
    empty = write_wav(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32))
    with pytest.raises(AudioError, match=rf"^{empty}: contains no samples"):
        AudioReader(empty)
    adpcm = tmp_path / "odd.wav"  # a RIFF/WAVE header with an encoding neither we nor sphn decode
    adpcm.write_bytes(empty.read_bytes()[:20] + b"\x55\x00" + empty.read_bytes()[22:])
    with pytest.raises(AudioError, match=rf"^{adpcm}: cannot decode audio \(unsupported wav encoding"):
        AudioReader(adpcm)
