"""`moshi-mlx --help`, `--version` and every command's `--help`: they exit 0, list every command or
option with a sentence, and show defaults."""

from __future__ import annotations

import argparse
import importlib
import re
from importlib.metadata import version

import pytest

from moshi_mlx.cli.main import COMMANDS, main


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        main(list(argv))
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_top_level_help_lists_each_command_with_a_line_and_examples(capsys):
    code, out, err = run_cli(capsys, "--help")
    assert (code, err) == (0, "")
    for name in COMMANDS:
        line = next((x for x in out.splitlines() if x.strip().startswith(name + " ")), None)
        assert line is not None and len(line.split(None, 1)[1]) > 20, f"no summary for {name}:\n{out}"
    assert "examples:" in out and "moshi-mlx run " in out and "--version" in out and "--debug" in out


def test_no_arguments_shows_the_help_and_exits_2(capsys):
    code, out, err = run_cli(capsys)
    assert code == 2 and out == "" and "commands:" in err


def test_version_comes_from_the_package_metadata(capsys):
    import moshi_mlx

    code, out, _ = run_cli(capsys, "--version")
    assert code == 0 and out == f"moshi-mlx {version('mlx-moshi')}\n"
    assert moshi_mlx.__version__ == version("mlx-moshi")


def parser_of(name: str) -> argparse.ArgumentParser | None:
    module = importlib.import_module(COMMANDS[name])
    return module.configure_parser() if hasattr(module, "configure_parser") else None


@pytest.mark.parametrize("name", list(COMMANDS))
def test_command_help_mentions_every_option_with_a_sentence(name, capsys):
    code, out, err = run_cli(capsys, name, "--help")
    assert (code, err) == (0, ""), err
    assert out.startswith(f"usage: moshi-mlx {name}")
    parser = parser_of(name)
    if parser is None:
        return
    for action in parser._actions:
        for flag in action.option_strings:
            assert flag in out, f"{name} --help does not mention {flag}"
        label = action.option_strings[0] if action.option_strings else action.dest
        assert action.help and len(action.help) > 10, f"{name}: {label} has no help sentence"
        shown = default_shown(action, out)
        assert shown, f"{name}: the default of {label} ({action.default!r}) is not shown"


def default_shown(action: argparse.Action, help_text: str) -> bool:
    """Whether the help states `action`'s default (options without a meaningful default need not)."""
    if not action.option_strings or action.default is None or action.default is False:
        return True
    if action.default == argparse.SUPPRESS:  # --help
        return True
    flat = " ".join(help_text.split()).replace("- ", "-")  # argparse may wrap at a hyphen
    return f"(default: {action.default})" in flat or "default" in (action.help or "").lower()


def test_mimi_backend_defaults_to_auto_and_says_how_it_chooses(capsys):
    for name in ("chat", "run"):
        parser = parser_of(name)
        backend = next(a for a in parser._actions if "--mimi-backend" in a.option_strings)
        assert backend.default is None
        flat = " ".join(backend.help.split())
        assert re.search(r"auto: mlx on a GPU.*rust when rustymimi is installed, else mlx", flat), flat


def test_sampling_options_reach_sampling_params():
    from moshi_mlx.cli.loading import sampling_params

    args = parser_of("run").parse_args(
        ["in.wav", "out.wav", "--text-temp", "0.5", "--text-top-k", "7", "--text-top-p", "0.9",
         "--audio-temp", "0.6", "--audio-top-k", "11", "--audio-top-p", "0.8", "--seed", "3"]
    )
    p = sampling_params(args)
    assert (p.text_temp, p.text_top_k, p.text_top_p) == (0.5, 7, 0.9)
    assert (p.audio_temp, p.audio_top_k, p.audio_top_p, p.seed) == (0.6, 11, 0.8, 3)
    assert (p.text_sampler().top_p, p.audio_sampler().top_p) == (0.9, 0.8)


def test_one_dtype_spelling_across_commands():
    from moshi_mlx.weights.common import DTYPES

    for name in ("run", "chat", "convert", "quantize", "bench"):
        dtype = next(a for a in parser_of(name)._actions if "--dtype" in a.option_strings)
        assert list(dtype.choices) == list(DTYPES) == ["bf16", "fp16", "fp32"], name
