"""Our page in a real browser: Debian's Chromium, driven by Playwright, with a fake microphone that
plays espeak-ng speech, talks to `serve` (tiny model) for more than 10 s. Needs /usr/bin/chromium
(or MOSHI_MLX_CHROMIUM) and the `playwright` package; no browser is downloaded."""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import require, unavailable
from serve_support import RunningServer, tiny_conversation

from moshi_mlx.weights.tiny import make_tiny_model

pytestmark = pytest.mark.browser
ROOT = Path(__file__).resolve().parents[1]
SPEECH = ROOT / "tests" / "assets" / "speech_24k.wav"
TALK_SECONDS = 12.0


def launch_chromium(playwright, executable: str):
    """Headless Chromium whose fake microphone plays the speech asset, with autoplay allowed."""
    return playwright.chromium.launch(executable_path=executable, headless=True, args=[
        "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={SPEECH}", "--autoplay-policy=no-user-gesture-required",
    ])


def chromium() -> str:
    """MOSHI_MLX_CHROMIUM, else Debian's chromium, else google-chrome (Ubuntu's CI images ship it)."""
    path = os.environ.get("MOSHI_MLX_CHROMIUM") or next(
        (found for name in ("chromium", "google-chrome", "google-chrome-stable") if (found := shutil.which(name))),
        "/usr/bin/chromium")
    if not Path(path).is_file():
        unavailable("chromium", f"no Chromium at {path} (apt-get install chromium, or set MOSHI_MLX_CHROMIUM)")
    return path


def artifacts(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("MOSHI_MLX_ARTIFACTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_the_page_talks_with_moshi_in_chromium(tmp_path):
    executable = chromium()
    sync_api = require("playwright.sync_api")
    folder = make_tiny_model(tmp_path / "tiny-moshi")
    conversation = tiny_conversation(folder, record=True)
    server = RunningServer(conversation)
    conversation.mimi.rms.clear()  # the warm-up's silent frames
    try:
        with sync_api.sync_playwright() as p:
            browser = launch_chromium(p, executable)
            try:
                page = browser.new_page(viewport={"width": 900, "height": 760})
                console: list[str] = []
                page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
                page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
                page.goto(server.url)
                page.click("#start")
                page.wait_for_function("window.moshiStats.state === 'live'", timeout=30_000)
                start = time.monotonic()
                page.wait_for_function(f"window.moshiStats.sentSamples >= {TALK_SECONDS} * 24000",
                                       timeout=int(1000 * (TALK_SECONDS + 30)))
                talked = time.monotonic() - start
                stats = page.evaluate("({...window.moshiStats})")
                transcript = page.inner_text("#transcript")
                latency = page.inner_text("#latency")
                page.screenshot(path=str(artifacts(tmp_path) / "serve_page.png"))
                if os.environ.get("MOSHI_MLX_README_SCREENSHOT"):
                    page.screenshot(path=os.environ["MOSHI_MLX_README_SCREENSHOT"])
                sizes = page.evaluate("(() => { const f = window.moshiConversation(); "
                                      "return [f.wav.size, f.transcript.size]; })()")
                page.click("#stop")
                page.wait_for_function("window.moshiStats.state === 'stopped'")
            finally:
                browser.close()
    finally:
        server.stop()
    details = f"stats {stats}; console {console[-10:]}"
    assert talked >= TALK_SECONDS - 2, details  # the fake microphone runs in real time
    heard = np.array(conversation.mimi.rms)
    assert heard.size >= 10 * 12.5 * 0.8, details
    assert np.mean(heard > 0.01) > 0.3, f"the server heard mostly silence: {np.round(heard[:40], 4)}"
    assert transcript.strip(), details
    assert stats["playedSamples"] / stats["sampleRate"] >= 5.0, details
    assert stats["latencyMs"] is not None and latency.endswith(" ms") and latency[:-3].isdigit(), details
    assert stats["errors"] == [], details
    assert sizes[0] > 44 + 4 * stats["sampleRate"] * 5 and sizes[1] > 1, sizes
    session = server.server.sessions[-1]
    assert session.frames_processed > 0, session.summary()


def test_kyutai_web_client_works_unchanged(tmp_path):
    """Kyutai's own client (`--static DIST`), built by tests/fixtures/build_kyutai_client.sh from a
    kyutai-labs/moshi checkout; opt-in (MOSHI_MLX_KYUTAI_CLIENT=DIST) since the build needs their
    sources and the npm registry."""
    dist = os.environ.get("MOSHI_MLX_KYUTAI_CLIENT")
    if not dist:
        pytest.skip("set MOSHI_MLX_KYUTAI_CLIENT to a dist built by tests/fixtures/build_kyutai_client.sh")
    executable = chromium()
    sync_api = require("playwright.sync_api")
    folder = make_tiny_model(tmp_path / "tiny-moshi")
    conversation = tiny_conversation(folder, record=True)
    server = RunningServer(conversation, static=Path(dist))
    conversation.mimi.rms.clear()
    try:
        with sync_api.sync_playwright() as p:
            browser = launch_chromium(p, executable)
            try:
                page = browser.new_page(viewport={"width": 1000, "height": 800})
                page.goto(server.url)
                page.get_by_text("Connect").click()
                page.wait_for_function("document.body.innerText.includes('Audio played')", timeout=30_000)
                time.sleep(TALK_SECONDS)
                body = page.inner_text("body")
                page.screenshot(path=str(artifacts(tmp_path) / "kyutai_client.png"))
            finally:
                browser.close()
    finally:
        server.stop()
    heard = np.array(conversation.mimi.rms)
    assert heard.size >= 10 * 12.5 * 0.8 and np.mean(heard > 0.01) > 0.3, heard.size
    played = re.search(r"Audio played:\s*(\d+):(\d+\.\d+)", body)
    assert played and 60 * int(played[1]) + float(played[2]) >= 5.0, body[-400:]
    assert server.server.sessions[-1].frames_processed > 0
