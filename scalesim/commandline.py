"""What every scalesim command shares: failures reach the user as one line, never a traceback.

A `ScalesimError` (bad input, a busy port, a missing binary) is shown as it is, with exit status 1;
Ctrl-C exits with 130 once every server the command started has been stopped; anything else is a
bug, shown as one line that points to a file holding the traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from scalesim.errors import ScalesimError

F = TypeVar("F", bound=Callable[..., Any])


def friendly_errors(command: F) -> F:
    """One line and a non-zero exit for every failure a user can meet, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except ScalesimError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            click.echo("interrupted: every server this command started has been stopped", err=True)
            sys.exit(130)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort, SystemExit):
            raise
        except Exception as exc:  # a bug, not bad input: keep the details, show one line
            import tempfile
            import traceback

            with tempfile.NamedTemporaryFile("w", prefix="scalesim-error-", suffix=".txt", delete=False) as log:
                traceback.print_exc(file=log)
            raise click.ClickException(f"internal error: {type(exc).__name__}: {exc} (details: {log.name})") from None

    return wrapper  # type: ignore[return-value]
