"""Errors that reach the user as one line.

Every failure a user can cause or meet (a malformed scenario, a port in use, a missing binary) is a
`ScalesimError`: the command line prints its message and exits non-zero, without a traceback.
"""


class ScalesimError(Exception):
    """A failure explained in one line, fit to show the user as it is."""


class ScenarioError(ScalesimError):
    """A scenario file that cannot be used: names the file, the field and what is wrong."""


class ComponentError(ScalesimError):
    """A server that could not be found, started or reached."""
