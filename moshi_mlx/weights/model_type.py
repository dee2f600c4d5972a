"""Which task a checkpoint is for (config.json `model_type`, as Kyutai's loaders read it) and the
command that runs it, so that a model given to the wrong command fails in one line naming the right one."""

from __future__ import annotations

from pathlib import Path

from ..errors import InvalidArgument
from ..hub import ModelFiles, resolve

# model_type -> (what it is, the command that runs it)
KINDS: dict[str, tuple[str, str]] = {
    "moshi": ("a Moshi dialogue model", "moshi-mlx run` or `moshi-mlx chat"),
    "stt": ("an STT model", "moshi-mlx transcribe"),
    "hibiki": ("a Hibiki translation model", "moshi-mlx translate"),
    "tts": ("a TTS model", "moshi-mlx speak"),
}


def model_type(files: ModelFiles) -> str:
    """The checkpoint's `model_type` ("moshi" when its config has none, as torch moshi assumes)."""
    return str((files.config_dict() or {}).get("model_type", "moshi"))


def check_model_type(source: str | Path | ModelFiles, expected: str) -> ModelFiles:
    """The files of `source`, or a one-line error when its model is not of type `expected`
    ("this is an STT model; use `moshi-mlx transcribe`"). Reads only config.json: no weights load."""
    files = source if isinstance(source, ModelFiles) else resolve(source)
    kind = model_type(files)
    if kind != expected:
        raise InvalidArgument(wrong_type(kind))
    return files


def wrong_type(kind: str) -> str:
    """"this is an STT model; use `moshi-mlx transcribe`" for a model of type `kind`."""
    what, command = KINDS.get(kind, (f"a {kind!r} model", ""))
    return f"this is {what}; use `{command}`" if command else f"this is {what}, not one moshi-mlx runs"
