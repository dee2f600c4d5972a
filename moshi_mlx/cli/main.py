"""`moshi-mlx <command> ...`: dispatches to `moshi_mlx.cli.<command>.main`, importing it lazily."""

from __future__ import annotations

import importlib
import sys

from .common import DEBUG_ENV, EXIT_INTERRUPTED, fail, set_debug

# Command name -> module with `main(argv)`. Add new commands here.
COMMANDS: dict[str, str] = {
    "chat": "moshi_mlx.cli.chat",
    "serve": "moshi_mlx.cli.serve",
    "run": "moshi_mlx.cli.run",
    "convert": "moshi_mlx.cli.convert",
    "quantize": "moshi_mlx.cli.quantize",
    "bench": "moshi_mlx.cli.bench",
    "make-tiny": "moshi_mlx.cli.make_tiny",
    "finetune": "moshi_mlx.cli.finetune",
    "fuse": "moshi_mlx.cli.fuse",
    "transcribe": "moshi_mlx.cli.transcribe",
    "translate": "moshi_mlx.cli.translate",
    "speak": "moshi_mlx.cli.speak",
}

# One line per command for `moshi-mlx --help` (a command without one shows its module's first line).
SUMMARIES: dict[str, str] = {
    "chat": "talk with Moshi live through the microphone and speakers (use headphones)",
    "serve": "talk with Moshi in the browser (our page, or Kyutai's client; no headphones needed)",
    "run": "Moshi answers a recorded audio file: writes its voice to a wav and prints its text",
    "convert": "convert an LM checkpoint (Kyutai torch or MLX, ours) to our format, optionally quantized",
    "quantize": "quantize an unquantized LM checkpoint to 4 or 8 bits into a new folder",
    "bench": "time the streaming LM step (ours, and Kyutai's moshi_mlx when given its venv)",
    "make-tiny": "build a tiny random model folder (a few MB, seconds) to try every command offline",
    "finetune": "fine-tune Moshi on your stereo dialogues (LoRA, QLoRA or full; moshi-finetune's data format)",
    "fuse": "merge a fine-tune's adapter into the weights (our format, or Kyutai's torch layout for its servers)",
    "transcribe": "speech to text with Kyutai STT: text, SRT/VTT subtitles or JSON with word timestamps",
    "translate": "speech translation with Hibiki: the translated voice to a wav, its text printed",
    "speak": "text to speech with Kyutai TTS in a given voice, the wav written as it is made",
}

EXAMPLES = """\
examples:
  moshi-mlx chat                                  # default model kyutai/moshiko-mlx-q4 (downloaded once)
  moshi-mlx run question.wav answer.wav --text-out answer.txt
  moshi-mlx run question.wav answer.wav --model ./my-model-folder
  moshi-mlx quantize kyutai/moshiko-mlx-bf16 ./moshiko-q8 --bits 8
  moshi-mlx chat --help                           # every option of one command, with its default"""


def version() -> str:
    """The installed package version (pyproject's `version`, read by `moshi_mlx.__version__`)."""
    from .. import __version__

    return __version__


def _summary(name: str) -> str:
    if name in SUMMARIES:
        return SUMMARIES[name]
    doc = importlib.import_module(COMMANDS[name]).__doc__ or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def usage() -> str:
    """`moshi-mlx --help`: the commands, one line each, global options and examples."""
    width = max(len(n) for n in COMMANDS)
    lines = [
        "usage: moshi-mlx [--version] [--debug] <command> [options]",
        "",
        "Moshi, Kyutai's full-duplex speech dialogue model, on MLX.",
        "",
        "commands:",
        *(f"  {name:<{width}}  {_summary(name)}" for name in COMMANDS),
        "",
        "options:",
        "  -h, --help     show this help and exit",
        "  --version      print the version and exit",
        f"  --debug        on an error, print the full traceback with its causes (or set {DEBUG_ENV}=1)",
        "",
        EXAMPLES,
        "",
        "Run 'moshi-mlx <command> --help' for a command's options.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    while argv and argv[0] == "--debug":
        set_debug(True)
        argv = argv[1:]
    if not argv:
        print(usage(), file=sys.stderr)
        sys.exit(2)
    if argv[0] in ("-h", "--help"):
        print(usage())
        return
    if argv[0] == "--version":
        print(f"moshi-mlx {version()}")
        return
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        fail("moshi-mlx", f"unknown command {name!r} (commands: {', '.join(COMMANDS)}; see moshi-mlx --help)")
    try:
        importlib.import_module(COMMANDS[name]).main(rest)
    except KeyboardInterrupt:  # before or after the command's own handling (e.g. while importing MLX)
        print(f"moshi-mlx {name}: interrupted (Ctrl-C)", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    main()
