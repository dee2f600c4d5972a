"""The base class of errors caused by what a user gave us (a file, folder, option or value).

Every such error is a `MoshiError` (ConfigError, WeightsError, HubError, BackendError, TokenizerError,
AudioError, AudioDeviceError, ...): its message is one line naming the thing at fault, and the
command line prints it as `moshi-mlx <cmd>: error: <message>` with exit status 2. Anything else that
escapes is a bug and keeps its traceback. Subclasses also derive from the builtin they replace
(`ValueError`, `FileNotFoundError`, `OSError`), so `except ValueError` in callers still works.
"""

from __future__ import annotations


class MoshiError(Exception):
    """An error in the user's input, with a one-line message that names what is wrong."""


class InvalidArgument(MoshiError, ValueError):
    """An argument value that cannot be used (e.g. a negative temperature, a wrong shape)."""
