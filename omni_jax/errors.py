"""The project's error types.

Every error a user can cause (a bad flag or argument, an unreadable or malformed file) is an ``OmniJaxError``
whose message is ONE line naming the flag, argument or file and what is wrong with it. The CLI prints it as
``PROG: error: MESSAGE`` and exits with the class's ``exit_code``: 2 for a usage error (a flag, argument or
option out of range or of the wrong type), 1 for a bad file (missing, unreadable, corrupt, inconsistent).
Anything else escaping is a bug in omni_jax.
"""

from __future__ import annotations


class OmniJaxError(ValueError):
    """Base class: a one-line, user-facing error (subclass of ValueError for callers that catch that)."""

    exit_code = 1


class UsageError(OmniJaxError):
    """A flag, argument or option that is out of range, of the wrong type, or inconsistent (exit code 2)."""

    exit_code = 2


class InputFileError(OmniJaxError):
    """A file or directory that is missing, unreadable, corrupt or does not match the model (exit code 1)."""

    exit_code = 1


def one_line(err: BaseException) -> str:
    """The first non-empty line of an error's message (or its class name when it has none)."""
    for line in str(err).splitlines():
        if line.strip():
            return line.strip()
    return type(err).__name__
