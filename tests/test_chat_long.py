"""Six minutes of live duplex chat (the real `chat()` loop, tiny Moshi, full-size random Mimi) over
the private PulseAudio's virtual devices, past rustymimi's position limit.

On a 2-core CPU the model is slower than real time, so in 6 minutes it processes fewer frames than
rustymimi's 4,096-frame limit. The test therefore gives the Conversation's `RustMimi` a rotary table
of 512 positions: one rustymimi instance of that size dies at frame 256 (tests/test_codec_swap.py
shows the death at its table size), so the chat only lives through swaps to fresh instances every
200 frames. Checked as in tests/test_audio_devices.py: frames in ~= 12.5/s of listening, every frame
processed, dropped or pending, no model-thread error, Moshi audible at the end; the numbers printed
(frames, swaps, wall time, RSS) are what the closing note reports.
"""

from __future__ import annotations

import io
import math
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import pulse_devices
from conftest import require
from pulse_devices import play_into_microphone, record_speaker

pulse_server = pulse_devices.pulse_server  # the session's private PulseAudio (a fixture)
pytestmark = [pytest.mark.slow, pytest.mark.audio, pytest.mark.usefixtures("pulse_server")]

SPEECH = Path(__file__).resolve().parent / "assets" / "speech_24k.wav"
LISTEN_S = 370.0  # a little over 6 minutes of listening
MAX_SEQ_LEN, SWAP_EVERY, WARMUP = 512, 200, 50  # one instance lives 256 frames; swap after 200 + 50


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def test_six_minutes_of_duplex_chat_past_rustymimis_limit(tmp_path):
    require("rustymimi")
    from moshi_mlx.audio.chat import chat
    from moshi_mlx.audio.conversation import Conversation
    from moshi_mlx.models.codec import RustMimi
    from moshi_mlx.sampling import SamplingParams
    from tiny_model import tiny_model_dir

    conversation = Conversation.from_pretrained(tiny_model_dir(), "rust", sampling=SamplingParams(seed=0))
    assert isinstance(conversation.mimi, RustMimi)
    conversation.mimi = RustMimi(
        conversation.mimi.path, swap_every=SWAP_EVERY, warmup=WARMUP, max_seq_len=MAX_SEQ_LEN
    )

    finished = threading.Event()

    def talk() -> None:  # the user speaks (7.7 s of speech, 6 s pauses) for the whole chat
        while not finished.wait(6.0):
            play_into_microphone(SPEECH)

    rss: list[int] = []  # MB, every 30 s of listening

    def sample_rss() -> None:
        while not finished.is_set():
            rss.append(round(rss_mb()))
            finished.wait(30.0)

    def on_listening() -> None:
        talker.start()
        sampler.start()

    recorder = record_speaker(tmp_path / "out.raw")
    talker = threading.Thread(target=talk)
    sampler = threading.Thread(target=sample_rss)
    start = time.monotonic()
    try:
        stats = chat(conversation, duration=LISTEN_S, out=io.StringIO(), on_listening=on_listening)
    finally:
        finished.set()
        for thread in (talker, sampler):
            if thread.is_alive():
                thread.join()
        recorder.terminate()
        recorder.wait()
    wall = time.monotonic() - start
    swaps = conversation.mimi.swaps
    print(f"wall {wall:.1f} s; {stats.summary()}; swaps {swaps}; RSS MB every 30 s: {rss}")

    expected = stats.seconds * 12.5
    assert stats.seconds >= 360, stats.summary()
    # As in test_audio_devices: the 'high' latency device buffer and ALSA->PulseAudio on a saturated
    # 2-core box lose some input; the loop never sees more than the clock delivers.
    assert 0.6 * expected <= stats.frames_in <= expected + 2, stats.summary()
    assert stats.frames_processed + stats.frames_dropped_in + stats.frames_pending == stats.frames_in
    # The backlog bound (3 frames) plus what arrives during the slowest step.
    assert stats.frames_pending <= 3 + math.ceil(max(stats.step_ms) / 80) + 1, stats.summary()
    assert stats.frames_out == stats.frames_processed - 1
    # Past the limit: several times the frames one instance can take, through several swaps per side.
    assert stats.frames_processed > 2 * (MAX_SEQ_LEN // 2), stats.summary()
    expected_swaps = (stats.frames_processed - WARMUP) // SWAP_EVERY
    assert swaps["enc"] >= expected_swaps >= 2 and swaps["dec"] >= expected_swaps - 1, swaps
    recorded = np.fromfile(tmp_path / "out.raw", dtype=np.float32)
    assert np.abs(recorded[-60 * 24000 :]).max() > 1e-3, "Moshi fell silent in the last minute"
