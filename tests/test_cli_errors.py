"""How commands end on errors: user errors in one line (exit 2), their cause with --debug, bugs with a
traceback, Ctrl-C in one line (exit 130); model files checked with one line naming the file."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import sentencepiece
from kyutai_mlx_fixture import ASSETS

from moshi_mlx.cli import common
from moshi_mlx.cli.main import main
from moshi_mlx.errors import MoshiError
from moshi_mlx.hub import MIMI_NAME, TOKENIZER_NAME, ModelFileError, check_safetensors
from moshi_mlx.tokenizer import Tokenizer, TokenizerError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def no_debug(monkeypatch):
    monkeypatch.delenv(common.DEBUG_ENV, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    yield
    common.set_debug(False)


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def write_wav(path: Path, seconds: float = 0.2) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(24000)
        w.writeframes(np.zeros(int(seconds * 24000), np.int16).tobytes())
    return path


def train_tokenizer(path: Path) -> Path:
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(["hello world, this is a tiny corpus"] * 20), model_writer=model,
        vocab_size=30, model_type="char", minloglevel=2,
    )
    path.write_bytes(model.getvalue())
    return path


def model_folder(root: Path, tokenizer: bytes | None = None, mimi: bytes | None = None) -> Path:
    """The tiny fixture LM (with its config.json) and the given tokenizer and Mimi file contents."""
    folder = root / "model"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(ASSETS / name, folder / name)
    if tokenizer is None:
        train_tokenizer(folder / TOKENIZER_NAME)
    else:
        (folder / TOKENIZER_NAME).write_bytes(tokenizer)
    (folder / MIMI_NAME).write_bytes(mimi if mimi is not None else b"")
    return folder


def assert_one_line(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err


# --- model files: one line naming the file and what is wrong ---


def test_corrupt_tokenizer_is_named(tmp_path, capsys):
    folder = model_folder(tmp_path, tokenizer=b"\x00garbage" * 50)
    code, _, err = run_cli(capsys, "run", write_wav(tmp_path / "q.wav"), tmp_path / "a.wav", "--model", folder)
    assert_one_line(code, err, str(folder / TOKENIZER_NAME), "not a SentencePiece text tokenizer")
    assert not (tmp_path / "a.wav").exists()
    with pytest.raises(TokenizerError) as info:
        Tokenizer(folder / TOKENIZER_NAME)
    assert info.value.__cause__ is not None  # sentencepiece's own error is kept as the cause


@pytest.mark.parametrize("backend", ["rust", "mlx"])
def test_truncated_mimi_is_named_whatever_the_backend(backend, tmp_path, capsys):
    if backend == "rust":
        pytest.importorskip("rustymimi")
    whole = (ASSETS / "model.safetensors").read_bytes()
    folder = model_folder(tmp_path, mimi=whole[: len(whole) // 2])
    code, _, err = run_cli(
        capsys, "run", write_wav(tmp_path / "q.wav"), tmp_path / "a.wav", "--model", folder, "--mimi-backend", backend
    )
    assert_one_line(code, err, str(folder / MIMI_NAME), f"truncated ({len(whole) // 2} bytes")


def test_wav_given_as_the_model_is_called_so(tmp_path, capsys):
    question = write_wav(tmp_path / "q.wav")
    code, _, err = run_cli(capsys, "run", question, tmp_path / "a.wav", "--model", question)
    assert_one_line(code, err, f"{question}: this is a RIFF/WAVE audio file, not a Moshi LM weights file")
    assert not (tmp_path / "a.wav").exists()


@pytest.mark.parametrize(
    "content, problem",
    [
        (b"", "not a safetensors file"),
        (b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}", "invalid header"),
        (b"fLaC\x00\x00\x00\x22", "a FLAC audio file"),
        (b"\xff" * 64, "header length"),
    ],
)
def test_check_safetensors_names_the_problem(content, problem, tmp_path):
    path = tmp_path / "m.safetensors"
    path.write_bytes(content)
    with pytest.raises(ModelFileError, match=problem) as info:
        check_safetensors(path)
    assert str(info.value).startswith(f"{path}: ") and isinstance(info.value, MoshiError)
    check_safetensors(ASSETS / "model.safetensors")  # a complete file passes


# --- user errors, --debug, bugs, Ctrl-C ---


def junk_convert(tmp_path: Path) -> list:
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")  # the JSON error is the cause
    return ["convert", junk, tmp_path / "out"]


def test_debug_flag_shows_the_chained_traceback(tmp_path, capsys):
    code, _, err = run_cli(capsys, *junk_convert(tmp_path))
    assert_one_line(code, err, "not a safetensors file")
    for argv in (["--debug", *junk_convert(tmp_path)], [*junk_convert(tmp_path), "--debug"]):
        common.set_debug(False)
        code, _, err = run_cli(capsys, *argv)
        assert code == 2 and "Traceback" in err and "ModelFileError" in err
        assert err.rstrip().splitlines()[-1].startswith("moshi-mlx convert: error: ")


def test_debug_environment_variable(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(common.DEBUG_ENV, "1")
    code, _, err = run_cli(capsys, *junk_convert(tmp_path))
    assert code == 2 and "Traceback" in err and "The above exception was the direct cause" in err


def test_a_bug_keeps_its_traceback():
    def mlx_shape_error():
        raise ValueError("[reshape] Cannot reshape array of size 6 into shape (4).")

    with pytest.raises(ValueError, match="reshape"):  # not turned into a one-line user error
        common.run("moshi-mlx x", mlx_shape_error)


def test_ctrl_c_is_one_line_exit_130(capsys):
    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as info:
        common.run("moshi-mlx x", interrupted)
    assert info.value.code == 130
    assert capsys.readouterr().err == "moshi-mlx x: interrupted (Ctrl-C)\n"


def test_bad_sampling_value_is_a_user_error(tmp_path, capsys):
    code, _, err = run_cli(capsys, "run", write_wav(tmp_path / "q.wav"), tmp_path / "a.wav", "--text-temp", "-1")
    assert_one_line(code, err, "text temperature must be >= 0, got -1.0")


def test_download_failure_adds_its_cause_on_a_second_line(tmp_path):
    """No network (a refused connection): the one-line message, then the network error."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "MOSHI_MLX_DEBUG"))}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HUB_CACHE=str(tmp_path / "cache"), HF_HUB_DOWNLOAD_TIMEOUT="5")
    proc = subprocess.run(
        [sys.executable, "-m", "moshi_mlx.cli.main", "convert", "kyutai/absent-repo", str(tmp_path / "out")],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=120,
    )
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2 and len(lines) == 2, proc.stderr
    assert lines[0].startswith("moshi-mlx convert: error: kyutai/absent-repo: not found in ")
    assert lines[0].endswith("and it could not be downloaded")
    assert lines[1].startswith("  cause: ") and "Traceback" not in proc.stderr


def test_ctrl_c_outside_the_command_body_is_one_line_too(capsys, monkeypatch):
    """E.g. while the command's module (and MLX) is still importing."""
    import importlib

    def interrupted_import(name):
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib, "import_module", interrupted_import)
    code, _, err = run_cli(capsys, "convert", "a", "b")
    assert (code, err) == (130, "moshi-mlx convert: interrupted (Ctrl-C)\n")
