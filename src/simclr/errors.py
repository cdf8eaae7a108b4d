"""The one error type users see.

Every check on user input (files, configs, checkpoints) raises :class:`SimCLRError` with a single line that
names the offending file or key and what is wrong. The CLI prints it as ``error: <message>`` and exits with
status 2, never with a traceback from deep inside torch.
"""

from __future__ import annotations

import os


class SimCLRError(Exception):
    """A user-facing error: one line, naming the file (or config key) and the problem."""


def file_error(path: str | os.PathLike, problem: str) -> SimCLRError:
    """Build a :class:`SimCLRError` of the form ``<path>: <problem>``."""
    return SimCLRError(f"{os.fspath(path)}: {problem}")
