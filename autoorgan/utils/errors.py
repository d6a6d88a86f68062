"""User-facing errors and the CLI wrapper that turns them into one-line messages.

Every problem caused by the user's input (missing files, bad geometry, unset or wrong paths, ...) raises
:class:`UserError` with a message that says what is wrong *and* what to do. CLIs run through :func:`cli_entry`,
which prints ``autoorgan: error: <message>`` on stderr and exits with status 2, without a traceback.
Programming errors keep their traceback (they are bugs, and the traceback is what a bug report needs).
"""
from __future__ import annotations

import functools
import os
import sys
from typing import Callable, TypeVar

EXIT_USER_ERROR = 2

F = TypeVar("F", bound=Callable[..., object])


class UserError(Exception):
    """A problem with the user's input or set-up. ``str(err)`` is the one-line message shown to the user."""


class DatasetIntegrityError(UserError):
    """The raw dataset failed the integrity check; the message names the case and the fix."""


def cli_entry(func: F) -> F:
    """Wrap a CLI ``main``: UserError -> one line on stderr + exit 2; Ctrl-C -> exit 130; else unchanged."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except UserError as err:
            msg = " ".join(str(err).split())  # always one line
            print(f"autoorgan: error: {msg}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)
        except KeyboardInterrupt:
            print("autoorgan: interrupted; rerun the same command to resume where it stopped", file=sys.stderr)
            sys.exit(130)
        except BrokenPipeError:  # e.g. piping --help into head
            os._exit(0)

    return wrapper  # type: ignore[return-value]
