"""Password hashes: PBKDF2-HMAC-SHA256 from the standard library, parameters stored in the hash.

A stored hash reads ``pbkdf2_sha256$<iterations>$<salt>$<digest>`` (salt and digest in unpadded
URL-safe base64), the same shape Django uses. Because the iteration count travels with the hash,
verification needs no configuration and the cost can change without invalidating old hashes.

The default cost (``AppConfig.password_iterations``, 1000 iterations, about 0.25 ms per hash) is far
below what a production service should use (hundreds of thousands). It is chosen for what this app
is: a scale model whose seed must hash a thousand passwords in a fraction of a second and whose
logins should cost the server about as much as its other requests. ``docs/api.md`` says the same.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

SCHEME = "pbkdf2_sha256"
SALT_BYTES = 16


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str, *, salt: bytes, iterations: int) -> str:
    """Hash ``password`` with the given salt (callers draw it from a seeded or secure RNG)."""
    if iterations < 1:
        raise ValueError(f"iterations must be at least 1, not {iterations}")
    digest = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    return f"{SCHEME}${iterations}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches ``stored``; malformed hashes simply do not match."""
    try:
        scheme, iterations_text, salt_text, digest_text = stored.split("$")
        iterations = int(iterations_text)
        salt, expected = _unb64(salt_text), _unb64(digest_text)
    except ValueError:
        return False
    if scheme != SCHEME or iterations < 1:
        return False
    actual = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8", "surrogatepass"), salt, iterations)
    return hmac.compare_digest(actual, expected)
