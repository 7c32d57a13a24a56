"""What every scalesim command shares: failures reach the user as one line, never a traceback.

A `ScalesimError` (bad input, a busy port, a missing binary) is shown as it is, with exit status 1;
Ctrl-C exits with 130 once every server the command started has been stopped; an `OSError` about a
file (a full disk, a folder that cannot be written) names the file and the reason; anything else is
a bug, shown as one line that points to a file holding the traceback.

A full disk deserves its own care: it rarely fails where it is: a server whose log cannot be written
exits with an empty log, a tool fails with "no output". So when a command fails while the folder it
writes to (``--runs-dir``, ``--output``) has next to no free space left, the line says so first,
naming the folder, with the failure as it was seen after it.
"""

from __future__ import annotations

import errno
import functools
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import click

from scalesim.errors import ScalesimError

F = TypeVar("F", bound=Callable[..., Any])

DISK_FULL_ERRORS = (errno.ENOSPC, errno.EDQUOT)
#: Below this much free space in a command's output folder, a failure there is put down to a full disk.
NEARLY_FULL_BYTES = 1024 * 1024
#: The options naming the folder a command writes to.
OUTPUT_OPTIONS = ("runs_dir", "output")


def friendly_errors(command: F) -> F:
    """One line and a non-zero exit for every failure a user can meet, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except ScalesimError as exc:
            raise click.ClickException(_with_disk_hint(str(exc), kwargs)) from None
        except KeyboardInterrupt:
            click.echo("interrupted: every server this command started has been stopped", err=True)
            sys.exit(130)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort, SystemExit):
            raise
        except OSError as exc:
            line = _os_error_line(exc, kwargs)
            if line is None:
                line = _with_disk_hint(_internal_error(exc), kwargs)
            raise click.ClickException(line) from None
        except Exception as exc:  # a bug, not bad input: keep the details, show one line
            raise click.ClickException(_with_disk_hint(_internal_error(exc), kwargs)) from None

    return wrapper  # type: ignore[return-value]


def _internal_error(exc: BaseException) -> str:
    import tempfile
    import traceback

    try:
        with tempfile.NamedTemporaryFile("w", prefix="scalesim-error-", suffix=".txt", delete=False) as log:
            traceback.print_exc(file=log)
        details = f"details: {log.name}"
    except OSError:  # the temporary folder may be the full one
        details = "no details file: the temporary folder cannot be written"
    return f"internal error: {type(exc).__name__}: {_one_line(str(exc))} ({details})"


def _os_error_line(exc: OSError, options: Mapping[str, Any]) -> str | None:
    """One line for an operating-system failure a user can act on; None for one that is a bug."""
    if exc.errno in DISK_FULL_ERRORS:
        where = exc.filename or _output_folder(options) or "a file this command writes"
        return f"{where}: {_reason(exc.errno)}"
    if exc.filename is not None and exc.strerror:
        return _with_disk_hint(f"{exc.filename}: {exc.strerror}", options)
    return None


def _reason(code: int | None) -> str:
    """`os.strerror` as the rest of a sentence: ``no space left on device``, ``disk quota exceeded``."""
    text = os.strerror(code) if code is not None else "failed"
    return text[:1].lower() + text[1:]


def _output_folder(options: Mapping[str, Any]) -> Path | None:
    for name in OUTPUT_OPTIONS:
        value = options.get(name)
        if isinstance(value, str | Path):
            return Path(value)
    return None


def _with_disk_hint(line: str, options: Mapping[str, Any]) -> str:
    """`line`, led by the full disk that likely caused it when the command's output folder has none left."""
    folder = _output_folder(options)
    if folder is None or not _nearly_full(folder):
        return line
    return f"{folder}: {_reason(errno.ENOSPC)} ({line})"


def _nearly_full(folder: Path) -> bool:
    existing = folder.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        usage = os.statvfs(existing)
    except (OSError, AttributeError):  # AttributeError: no statvfs on this system
        return False
    return usage.f_bavail * usage.f_frsize < NEARLY_FULL_BYTES


def _one_line(text: str) -> str:
    return " ".join(text.split())
