"""Passwords of the servers a deployment starts, and keeping them out of what gets written down.

Every PostgreSQL cluster and every key-value server gets a random password of its own when it is
made (`new_password`), so a server on 127.0.0.1 is not open to every other user of the machine.
Servers read their passwords from files only their own user can read (`write_private`), never
from a command line, which ``ps`` shows to everyone. Clients get them inside URLs
(``postgresql://user:password@host:port/db``, ``redis://:password@host:port/0``), which stay in
memory and in the environment of the app processes; anything written to disk or shown to the user
goes through `redact` first, which masks the password of every URL and every value whose key
names a secret (``password``, ``token``, ``secret``).
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
from pathlib import Path
from typing import Any

#: Random bytes per password: 24 bytes are 32 URL-safe characters (A-Z a-z 0-9 - _).
PASSWORD_BYTES = 24
#: What a redacted password reads as.
MASK = "***"
_SECRET_KEY = re.compile(r"password|passwd|secret|token", re.IGNORECASE)


def new_password() -> str:
    """A random password, safe in URLs, shell words and config files without quoting."""
    return secrets.token_urlsafe(PASSWORD_BYTES)


def redact_url(url: str) -> str:
    """`url` with its password, if it has one, replaced by ``***``."""
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    authority, slash, tail = rest.partition("/")
    if "@" not in authority:
        return url
    credentials, host = authority.rsplit("@", 1)
    if ":" not in credentials:
        return url
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:{MASK}@{host}{slash}{tail}"


def redact(value: Any) -> Any:
    """A copy of `value` (JSON-like data) with every password masked: URLs, and values of secret keys."""
    if isinstance(value, dict):
        return {key: MASK if _is_secret(key, item) else redact(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redact(item) for item in value]
    if isinstance(value, str):
        return redact_url(value)
    return value


def _is_secret(key: Any, value: Any) -> bool:
    return isinstance(key, str) and bool(_SECRET_KEY.search(key)) and isinstance(value, str) and bool(value)


def write_private(path: Path, text: str, *, owner: str | None = None) -> Path:
    """Write `text` to a file that only its owner may read (mode 0600), from the first byte on.

    `owner` (a user name, when running as root) is the user the file is handed to: a server that
    runs as another user must be able to read its own password file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(descriptor, 0o600)  # a file that existed before keeps its mode otherwise
        if owner is not None:
            entry = pwd.getpwnam(owner)
            os.fchown(descriptor, entry.pw_uid, entry.pw_gid)
        os.write(descriptor, text.encode())
    finally:
        os.close(descriptor)
    return path
