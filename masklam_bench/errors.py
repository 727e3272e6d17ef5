"""The suite's own errors: one base class, so the command line catches these and nothing else.

An error derived from :class:`BenchError` means bad input or a file the user can fix, and its
message is one sentence that says what to do; ``masklam-bench`` prints it on one line and exits
with status 2. Any other exception is a bug and keeps its traceback. This module imports nothing,
so every module of the package (``envs`` too) can raise these without an import cycle.
"""

from __future__ import annotations


class BenchError(Exception):
    """Base of every error the suite raises on purpose; its message says what to do."""


class UserError(BenchError, ValueError):
    """Bad input (an argument, a name, a preset field, a setting): printed as one sentence.

    Also a ``ValueError``, which is what library callers of the checking functions expect.
    """


class CheckpointError(BenchError, ValueError):
    """A checkpoint that cannot be loaded: damaged, of another run, or not a checkpoint of ours."""


class PluginError(BenchError, TypeError):
    """A method that breaks the interface the runner relies on (what ``train_step`` or ``encode``
    return); the message names the method, what it did and what is expected."""


class MissingFileError(BenchError, FileNotFoundError):
    """A file or folder the suite needs is absent; the message says how to make it."""


__all__ = ["BenchError", "CheckpointError", "MissingFileError", "PluginError", "UserError"]
