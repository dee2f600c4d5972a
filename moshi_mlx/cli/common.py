"""Shared CLI behaviour: bad input gives one line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, NoReturn, TypeVar

T = TypeVar("T")

# Errors caused by the user's input (files, folders, configs, options): ConfigError, WeightsError and
# ValueError from the API, HubError, FileExistsError and other OSErrors from files and downloads.
USER_ERRORS = (ValueError, OSError)


def fail(prog: str, message: str) -> NoReturn:
    """Prints `prog: error: message` (first line only) and exits with status 2."""
    line = message.strip().splitlines()[0] if message.strip() else "failed"
    print(f"{prog}: error: {line}", file=sys.stderr)
    sys.exit(2)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors."""

    def error(self, message: str) -> NoReturn:
        fail(self.prog, message)


def run(prog: str, fn: Callable[[], T]) -> T:
    """Calls `fn`, turning user errors into `fail`."""
    try:
        return fn()
    except USER_ERRORS as e:
        fail(prog, str(e) or type(e).__name__)
