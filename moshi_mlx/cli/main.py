"""`moshi-mlx <command> ...`: dispatches to `moshi_mlx.cli.<command>.main`, importing it lazily."""

from __future__ import annotations

import importlib
import sys

from .common import fail

# Command name -> module with `main(argv)`. Add new commands here.
COMMANDS: dict[str, str] = {
    "chat": "moshi_mlx.cli.chat",
    "run": "moshi_mlx.cli.run",
    "convert": "moshi_mlx.cli.convert",
    "quantize": "moshi_mlx.cli.quantize",
    "bench": "moshi_mlx.cli.bench",
}

USAGE = "usage: moshi-mlx {" + ",".join(COMMANDS) + "} ... (moshi-mlx <command> --help for details)"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stderr if not argv else sys.stdout)
        sys.exit(2 if not argv else 0)
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        fail("moshi-mlx", f"unknown command {name!r} (commands: {', '.join(COMMANDS)})")
    importlib.import_module(COMMANDS[name]).main(rest)


if __name__ == "__main__":
    main()
