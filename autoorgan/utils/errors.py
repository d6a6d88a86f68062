"""User-facing errors and the CLI wrapper that turns them into one-line messages.

Every problem caused by the user's input (missing files, bad geometry, unset or wrong paths, ...) raises
:class:`UserError` with a message that says what is wrong *and* what to do. CLIs run through :func:`cli_entry`,
which prints ``autoorgan: error: <message>`` on stderr and exits with status 2, without a traceback; a failed file
operation (``OSError``: full disk, read-only folder, missing path) is reported the same way with its path.
Programming errors keep their traceback (they are bugs, and the traceback is what a bug report needs).
"""
from __future__ import annotations

import argparse
import errno
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


RESUME_HINT = "rerun the same command to resume where it stopped"
_OS_FIXES = {errno.ENOSPC: "free disk space or choose a folder on another disk",
             errno.EDQUOT: "free disk space or choose a folder on another disk",
             errno.EACCES: "check the permissions or choose a folder you can write to",
             errno.EPERM: "check the permissions or choose a folder you can write to",
             errno.EROFS: "the file system is read-only: choose another folder",
             errno.ENOENT: "check the path", errno.ENOTDIR: "check the path",
             errno.ELOOP: "a symbolic link points to itself: fix or remove it",
             errno.ENAMETOOLONG: "use a shorter path"}


def os_error_message(err: OSError) -> str:
    """One line for a failed file operation: what failed, on which path, and what to do."""
    where = f" {err.filename}" if err.filename else ""
    fix = _OS_FIXES.get(err.errno or -1, "check the path, the free space and the permissions")
    return f"file operation failed on{where}: {err.strerror or err}; {fix}"


def cli_entry(func: F | None = None, *, interrupted: str = RESUME_HINT):
    """Wrap a CLI ``main``: UserError -> one line on stderr + exit 2; a failed file operation (full disk, read-only
    folder, missing path) -> one line naming the path + exit 2; Ctrl-C -> ``interrupted`` hint + exit 130; anything
    else keeps its traceback (a bug). ``@cli_entry`` or ``@cli_entry(interrupted="...")``."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except UserError as err:
                msg = " ".join(str(err).split())  # always one line
                print(f"autoorgan: error: {msg}", file=sys.stderr)
                sys.exit(EXIT_USER_ERROR)
            except BrokenPipeError:  # e.g. piping --help into head
                os._exit(0)
            except OSError as err:
                print(f"autoorgan: error: {' '.join(os_error_message(err).split())}", file=sys.stderr)
                sys.exit(EXIT_USER_ERROR)
            except KeyboardInterrupt:
                print(f"autoorgan: interrupted; {interrupted}", file=sys.stderr)
                sys.exit(130)

        return wrapper  # type: ignore[return-value]

    return decorate(func) if func is not None else decorate


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse's parser, but a bad command line is one line (``autoorgan: error: ...; see PROG --help``) and exit
    status 2, like every other user error (argparse prints the usage block first)."""

    def error(self, message: str):  # type: ignore[override]
        print(f"autoorgan: error: {self.prog}: {message}; see {self.prog} --help", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not allowed: give an integer of at least 1")
    return value
