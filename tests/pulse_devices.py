"""Virtual audio devices for tests: a private PulseAudio server with 24 kHz mono null sinks `vmic`
(what we play into the "microphone", recorded through its monitor as the default source) and
`vspk` (the default sink, our "speaker", recorded through its monitor).

The server is the tests' own: its own runtime folder and socket (`PULSE_SERVER` points clients at
it), never a user's daemon, which is left alone. The session fixture `pulse_server` starts it once
(shared by every module that uses it) and stops it at teardown, then checks that nothing of it is left. Missing PulseAudio or
PortAudio skips the tests locally and fails them under CI=true (`conftest.unavailable`).

Test modules use it with `pulse_server = pulse_devices.pulse_server` (pytest finds fixtures by
module attribute) and `pytest.mark.usefixtures("pulse_server")`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from conftest import unavailable

RATE = 24_000
TOOLS = ("pulseaudio", "pactl", "paplay", "parec")


class PulseServer:
    """One private `pulseaudio --daemonize=no` process with the virtual devices, owned by us."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.socket = self.root / "native"
        self.address = f"unix:{self.socket}"
        self.log = self.root / "pulseaudio.log"
        self.process: subprocess.Popen | None = None

    def env(self) -> dict[str, str]:
        """The environment of a client of this server (and only this server)."""
        return {**os.environ, "PULSE_SERVER": self.address}

    def start(self, timeout: float = 10.0) -> None:
        """Starts the daemon and waits until it answers; raises RuntimeError with its log if not."""
        (self.root / "runtime").mkdir(parents=True, exist_ok=True)
        (self.root / "state").mkdir(exist_ok=True)
        script = self.root / "default.pa"
        script.write_text(
            f"load-module module-native-protocol-unix socket={self.socket} auth-anonymous=1\n"
            f"load-module module-null-sink sink_name=vmic rate={RATE} channels=1\n"
            f"load-module module-null-sink sink_name=vspk rate={RATE} channels=1\n"
            "set-default-source vmic.monitor\n"
            "set-default-sink vspk\n"
        )
        env = {
            **os.environ, "HOME": str(self.root), "XDG_CONFIG_HOME": str(self.root),
            "PULSE_RUNTIME_PATH": str(self.root / "runtime"), "PULSE_STATE_PATH": str(self.root / "state"),
        }
        env.pop("PULSE_SERVER", None)
        self.process = subprocess.Popen(
            ["pulseaudio", "--daemonize=no", "--exit-idle-time=-1", "--use-pid-file=no", "--system=no",
             "-n", "-F", str(script)],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(self.log, "wb"),
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            if self.answers():
                return
            time.sleep(0.1)
        self.stop()
        log = self.log.read_text(errors="replace").strip().splitlines()
        raise RuntimeError(f"pulseaudio did not start: {log[-1] if log else 'no output'}")

    def answers(self) -> bool:
        """Whether a client can talk to this server now."""
        return subprocess.run(["pactl", "info"], env=self.env(), capture_output=True).returncode == 0

    def stop(self, timeout: float = 10.0) -> None:
        """Stops the daemon (SIGTERM, then SIGKILL) and reaps it."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)

    def leftovers(self) -> list[int]:
        """Process ids of anything still running from this server's folder (Linux /proc)."""
        found = []
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                cmdline = (proc / "cmdline").read_bytes()
                state = next(line for line in (proc / "status").read_text().splitlines() if line.startswith("State:"))
            except (OSError, StopIteration):
                continue
            if str(self.root).encode() in cmdline and "zombie" not in state:
                found.append(int(proc.name))
        return found


def rescan_portaudio() -> None:
    """Makes PortAudio see the devices of the current `PULSE_SERVER` (or fails/skips without PortAudio)."""
    try:
        import sounddevice as sd
    except OSError as e:
        unavailable("portaudio", f"PortAudio (libportaudio2) is not installed: {e}")
    sd._terminate()
    sd._initialize()


class _Shared:
    """The one server of a session, however many test modules import the fixture."""

    server: PulseServer | None = None
    users = 0
    previous: str | None = None


@pytest.fixture(scope="session")
def pulse_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PulseServer]:
    """A private PulseAudio server with `vmic`/`vspk` for the whole session; this process and its
    children talk to it (`PULSE_SERVER`). Stopped when the last module using it is done, which
    fails if anything of it is left running."""
    if _Shared.server is None:
        for tool in TOOLS:
            if shutil.which(tool) is None:
                unavailable(tool, f"{tool} not installed (audio tests need pulseaudio and pulseaudio-utils)")
        server = PulseServer(tmp_path_factory.mktemp("pulse"))
        try:
            server.start()
        except RuntimeError as e:
            unavailable("pulseaudio", str(e))
        _Shared.server, _Shared.previous = server, os.environ.get("PULSE_SERVER")
        os.environ["PULSE_SERVER"] = server.address
    server = _Shared.server
    _Shared.users += 1
    try:
        rescan_portaudio()
        yield server
    finally:
        _Shared.users -= 1
        if _Shared.users == 0:
            _Shared.server = None
            if _Shared.previous is None:
                os.environ.pop("PULSE_SERVER", None)
            else:
                os.environ["PULSE_SERVER"] = _Shared.previous
            server.stop()
            left = server.leftovers()
            assert server.process.returncode is not None and not left, f"PulseAudio left running: pids {left}"


def no_device_env() -> dict[str, str]:
    """An environment in which PortAudio finds no device on a machine without sound cards: every
    sound server it could reach through ALSA points nowhere."""
    nowhere = "/nonexistent/moshi-mlx-test"
    return {**os.environ, "PULSE_SERVER": f"unix:{nowhere}", "PIPEWIRE_REMOTE": nowhere, "JACK_NO_START_SERVER": "1"}


def record_speaker(path) -> subprocess.Popen:
    """Starts recording the virtual speaker as raw float32 mono 24 kHz into `path`."""
    return subprocess.Popen(
        ["parec", "--device=vspk.monitor", f"--rate={RATE}", "--channels=1", "--format=float32le", "--raw"],
        stdout=open(path, "wb"),
    )


def play_into_microphone(wav_path) -> None:
    subprocess.run(["paplay", "--device=vmic", str(wav_path)], check=True)
