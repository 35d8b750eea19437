"""Errors with an exit code of their own (DESIGN.md §8).

0 success · 1 a numeric gate failed · 2 usage error (Click) · 3 an input could not be read.
"""

from __future__ import annotations


class EcbError(Exception):
    """Base class: a one-line, user-facing message and the process exit code."""

    exit_code = 3


class InputError(EcbError):
    """An input file, folder or value could not be read or understood (exit 3)."""

    exit_code = 3


class UsageError(EcbError):
    """Flags that contradict each other or the model (exit 2, like Click's own)."""

    exit_code = 2


class GateFailed(EcbError):
    """A numeric gate failed; artifacts are kept (exit 1)."""

    exit_code = 1
