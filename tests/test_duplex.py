"""The full-duplex loop's buffering, frame accounting and controlled dropping (no devices)."""

from __future__ import annotations

import time

import numpy as np

from moshi_mlx.audio.conversation import FrameResult
from moshi_mlx.audio.duplex import DuplexLoop, SampleFifo


class EchoConversation:
    """Returns each frame back one step later, with its index as text."""

    def __init__(self, delay_s: float = 0.0):
        self.prev = None
        self.count = 0
        self.delay_s = delay_s

    def step(self, frame):
        time.sleep(self.delay_s)
        out, self.prev = self.prev, frame
        self.count += 1
        return FrameResult(f"{self.count} ", self.count, out)


def test_fifo_arbitrary_sizes():
    fifo = SampleFifo()
    data = np.arange(1000, dtype=np.float32)
    for a, b in [(0, 3), (3, 500), (500, 1000)]:
        fifo.push(data[a:b])
    assert fifo.pop(1001) is None and len(fifo) == 1000
    got = np.concatenate([fifo.pop(n) for n in (7, 600, 393)])
    assert np.array_equal(got, data) and len(fifo) == 0
    fifo.push(data)
    assert fifo.drop_oldest(keep=10) == 990 and np.array_equal(fifo.pop(10), data[-10:])


def test_loop_round_trips_audio_with_odd_block_sizes():
    texts = []
    loop = DuplexLoop(
        EchoConversation(), on_text=texts.append, frame_size=1920, max_input_backlog=100, max_output_backlog=100
    )
    signal = np.random.default_rng(0).standard_normal(1920 * 10).astype(np.float32)
    for start in range(0, signal.size, 512):
        loop.push_input(signal[start : start + 512])
    while loop.process_available(timeout=0.01):
        pass
    assert loop.stats.frames_in == 10 and loop.stats.frames_processed == 10
    assert loop.stats.frames_out == 9 and texts == [f"{i} " for i in range(1, 11)]
    out = np.concatenate([loop.pull_output(960) for _ in range(18)])
    assert np.array_equal(out, signal[: 9 * 1920])
    assert not loop.pull_output(100).any()  # silence once drained
    assert loop.stats.output_underruns == 1


def test_model_behind_drops_oldest_input_frames():
    loop = DuplexLoop(EchoConversation(), frame_size=10, max_input_backlog=2)
    for i in range(8):
        loop.push_input(np.full(10, i, dtype=np.float32))
    loop.process_available(timeout=0.01)
    loop.process_available(timeout=0.01)
    loop.process_available(timeout=0.01)
    s = loop.stats
    assert s.frames_in == 8 and s.frames_processed + s.frames_dropped_in == 8
    assert s.frames_dropped_in >= 5
    # The most recent input is what the model got last.
    assert loop.conversation.prev[0] == 7


def test_output_backlog_is_bounded():
    loop = DuplexLoop(EchoConversation(), frame_size=10, max_input_backlog=100, max_output_backlog=3)
    for i in range(20):
        loop.push_input(np.full(10, i, dtype=np.float32))
    while loop.process_available(timeout=0.01):
        pass
    assert len(loop._output) == 30
    assert loop.stats.samples_dropped_out == (19 - 3) * 10


def test_threaded_run_and_error_propagation():
    loop = DuplexLoop(EchoConversation(delay_s=0.001), frame_size=100)
    loop.start()
    for _ in range(20):
        loop.push_input(np.ones(100, dtype=np.float32))
    deadline = time.time() + 5
    while loop.stats.frames_processed + loop.stats.frames_dropped_in < 20 and time.time() < deadline:
        time.sleep(0.01)
    loop.stop()
    assert loop.stats.frames_processed + loop.stats.frames_dropped_in == 20

    class Broken:
        def step(self, frame):
            raise ValueError("boom")

    loop = DuplexLoop(Broken(), frame_size=10)
    loop.start()
    loop.push_input(np.ones(10, dtype=np.float32))
    deadline = time.time() + 5
    while loop.running and time.time() < deadline:
        time.sleep(0.01)
    try:
        loop.stop()
    except RuntimeError as e:
        assert "boom" in str(e)
    else:
        raise AssertionError("the model thread's error was swallowed")
