"""`run`, `chat` and `serve` refuse a family member that is not a dialogue model in one line naming its
command, before any weights (LM or Mimi) load; `make-tiny` builds each kind."""

from __future__ import annotations

import numpy as np
import pytest

from moshi_mlx.audio.io import write_wav
from moshi_mlx.cli.make_tiny import main as make_tiny
from moshi_mlx.cli.speak import main as speak_main

EXPECTED = {
    "stt": "this is an STT model; use `moshi-mlx transcribe`",
    "hibiki": "this is a Hibiki translation model; use `moshi-mlx translate`",
    "tts": "this is a TTS model; use `moshi-mlx speak`",
}


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    root = tmp_path_factory.mktemp("family")
    for kind in EXPECTED:
        make_tiny([str(root / kind), "--kind", kind])
    return root


@pytest.fixture
def no_weights(monkeypatch):
    import moshi_mlx.audio.conversation as conversation

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(conversation, "load_pretrained", refuse)
    monkeypatch.setattr("moshi_mlx.audio.devices.check_devices", lambda *a: (None, None))


def _main(command: str):
    import importlib

    return importlib.import_module(f"moshi_mlx.cli.{command}").main


@pytest.mark.parametrize("kind", list(EXPECTED))
@pytest.mark.parametrize("command", ["run", "chat", "serve"])
def test_wrong_model_type_is_one_line(family, tmp_path, capsys, no_weights, kind, command):
    argv = ["--model", str(family / kind), "--mimi-backend", "mlx"]
    if command == "run":
        write_wav(tmp_path / "in.wav", np.zeros(24_000, np.float32))
        argv = [str(tmp_path / "in.wav"), str(tmp_path / "out.wav"), *argv]
    if command == "serve":
        argv += ["--port", "0"]
    with pytest.raises(SystemExit) as e:
        _main(command)(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith(EXPECTED[kind]) and err[-1].startswith(f"moshi-mlx {command}: error:")
    assert not (tmp_path / "out.wav").exists()


def test_speak_names_the_command_of_other_kinds(family, tmp_path, capsys):
    with pytest.raises(SystemExit):
        speak_main(["Hi", str(tmp_path / "o.wav"), "--model", str(family / "stt"), "--mimi-backend", "mlx"])
    assert capsys.readouterr().err.strip().endswith(EXPECTED["stt"])
