"""Shared CLI behaviour: how errors end a command, the help format and the `--debug` flag.

- A user error (`moshi_mlx.errors.MoshiError`, or an `OSError` about a file or device) prints
  `prog: error: <one line>` and exits 2; errors that opt in (`show_cause`) add their cause on a
  second line.
- Anything else is a bug: it propagates with its full traceback.
- `--debug` (any command, or `moshi-mlx --debug <command>`) or `MOSHI_MLX_DEBUG=1` prints the full
  chained traceback of user errors too.
- Ctrl-C prints one line and exits 130.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Any, Callable, NoReturn, Sequence, TypeVar

from ..errors import MoshiError

T = TypeVar("T")

# Errors caused by the user's input or environment: our own classes, and the operating system
# refusing a file or device operation (missing file, permission, full disk: the message names it).
USER_ERRORS = (MoshiError, OSError)
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
DEBUG_ENV = "MOSHI_MLX_DEBUG"

_debug = False


def set_debug(on: bool = True) -> None:
    """Shows full tracebacks for user errors too (the `--debug` flag)."""
    global _debug
    _debug = on


def debug_enabled() -> bool:
    """Whether `--debug` was given or `MOSHI_MLX_DEBUG` is set to a true value."""
    env = os.environ.get(DEBUG_ENV, "").strip().lower()
    return _debug or env in ("1", "true", "yes", "on")


def first_line(text: str, fallback: str = "failed") -> str:
    """The first non-empty line of `text` (stripped)."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[0] if lines else fallback


def fail(prog: str, message: str) -> NoReturn:
    """Prints `prog: error: message` (first line only) and exits with status 2."""
    print(f"{prog}: error: {first_line(message)}", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)


def describe(e: BaseException) -> str:
    """One line for an exception: its message, or its type when it has none."""
    return first_line(str(e), type(e).__name__)


def report_user_error(prog: str, e: BaseException) -> NoReturn:
    """Ends the command for user error `e`: one line (two with its cause), exit 2."""
    if debug_enabled():
        traceback.print_exception(e)
    print(f"{prog}: error: {describe(e)}", file=sys.stderr)
    cause = e.__cause__
    if cause is not None and getattr(e, "show_cause", False):
        print(f"  cause: {type(cause).__name__}: {describe(cause)}", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)


def run(prog: str, fn: Callable[[], T]) -> T:
    """Calls `fn`: user errors end in one line and exit 2, Ctrl-C in one line and exit 130;
    any other exception is a bug and keeps its traceback."""
    try:
        return fn()
    except KeyboardInterrupt as e:
        if debug_enabled():
            traceback.print_exception(e)
        print(f"{prog}: interrupted (Ctrl-C)", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except USER_ERRORS as e:
        report_user_error(prog, e)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps descriptions as written and appends `(default: X)` to options that have a default
    their help text does not already state."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text.lower()
            or default is None
            or default is False  # store_true flags (0 and 0.0 defaults are shown)
            or default == argparse.SUPPRESS
            or isinstance(action, (argparse._HelpAction, argparse._VersionAction))
            or action.option_strings == []
        ):
            return text
        return f"{text} (default: %(default)s)"


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors, defaults shown in `--help` and a `--debug` flag."""

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        self.add_argument(
            "--debug", action="store_true",
            help=f"on an error, print the full traceback with its causes (or set {DEBUG_ENV}=1)",
        )

    def error(self, message: str) -> NoReturn:
        fail(self.prog, f"{message} (see {self.prog} --help)")

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> argparse.Namespace:  # type: ignore[override]
        parsed = super().parse_args(args, namespace)
        if getattr(parsed, "debug", False):
            set_debug(True)
        return parsed
