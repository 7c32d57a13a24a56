"""Password hashes: PBKDF2 with the parameters stored in the hash."""

from __future__ import annotations

from reference_app.passwords import hash_password, verify_password


def test_hash_and_verify() -> None:
    stored = hash_password("password7", salt=b"0123456789abcdef", iterations=1000)
    assert stored.startswith("pbkdf2_sha256$1000$")
    assert verify_password("password7", stored)
    assert not verify_password("password8", stored)


def test_the_cost_travels_with_the_hash() -> None:
    cheap = hash_password("secret", salt=b"s" * 16, iterations=10)
    dear = hash_password("secret", salt=b"s" * 16, iterations=2000)
    assert cheap != dear
    assert verify_password("secret", cheap) and verify_password("secret", dear)


def test_the_salt_changes_the_hash() -> None:
    assert hash_password("x", salt=b"a" * 16, iterations=5) != hash_password("x", salt=b"b" * 16, iterations=5)


def test_malformed_hashes_never_match() -> None:
    for stored in ("", "plain", "md5$1$a$b", "pbkdf2_sha256$zero$a$b", "pbkdf2_sha256$0$AAAA$AAAA", "a$b$c"):
        assert not verify_password("anything", stored)


def test_unencodable_passwords_do_not_raise() -> None:
    stored = hash_password("x", salt=b"a" * 16, iterations=5)
    assert not verify_password("\ud800", stored)
