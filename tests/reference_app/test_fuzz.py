"""Fuzzing the HTTP API from its OpenAPI document (``reference_app/openapi.py``) with schemathesis.

schemathesis turns each operation of the document into a Hypothesis test: the document's examples,
its boundary and negative cases (ids 0 and 2**31, per_page past its maximum, bodies missing fields,
strings where numbers belong, ...) and then random requests within and outside the schemas. Every
answer must pass these checks:

* no 5xx (the app answers invalid input with a 4xx, never a server error);
* the status is one the document lists for the operation, the body matches the schema listed for
  that status, the media type is the one listed, and ``X-Served-By`` is present;
* an operation that needs a session really refuses the same request without one, or with a bogus
  token (schemathesis repeats successful requests that way);
* a request that violates the document (a negative case) is refused with a 4xx.

Two targets, each with its own seeded database: stage0's configuration in process (the app behind
schemathesis's ASGI transport) and the last stage's flags (sessions in the key-value server, joins
in the app, both caches, precomputed charges, an ops token on ``/api/_stats``) in a real uvicorn
process. Requests of user operations carry a session of seed user 1 (a fresh one for each logout),
so ids that the fuzzer draws as 1 reach the owner's answers and the others a 403.

Negative cases also drop the session the test adds, so missing authentication is fuzzed as well.
The fixture prints, per target, how many answers of each status every operation got (``-s``).

The default budget keeps this module around half a minute; ``SCALESIM_FUZZ_EXAMPLES=N`` asks for N
random examples per operation and target instead (the boundary and negative cases come on top; past
a few hundred, lift pytest's per-test timeout with ``--timeout 0``).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks
from schemathesis.python import asgi as schemathesis_asgi

from reference_app.app import create_app
from reference_app.config import AppConfig
from reference_app.openapi import openapi_document

from .conftest import DatabaseServer, make_config, seed, start_server, stop_server, unique_name


def _examples_per_operation() -> int:
    text = os.environ.get("SCALESIM_FUZZ_EXAMPLES", "25")
    if not text.isdigit() or int(text) < 1:
        raise pytest.UsageError(f"SCALESIM_FUZZ_EXAMPLES must be a positive integer, not {text!r}")
    return int(text)


FUZZ_EXAMPLES = _examples_per_operation()
FUZZ_USER = 1
# The fuzzer rents far more than a reader would: no open-rental limit, so rents keep reaching the
# write path instead of answering 409 after the fifth.
NO_RENTAL_LIMIT = 1_000_000
STATS_TOKEN = secrets.token_urlsafe(24)
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
    checks.ignored_auth,
    checks.negative_data_rejection,
]
TARGETS = ("stage0-asgi", "stage5-uvicorn")


@dataclass
class Target:
    """The schema as one app serves it (in process or over HTTP), and the session its cases carry."""

    name: str
    schema: schemathesis.BaseSchema
    token: str = ""
    # Answers seen, by operation and status (the fixture prints them: how far the fuzzer got).
    answers: Counter[tuple[str, int]] = field(default_factory=Counter)

    def login(self) -> str:
        body = {"email": f"user{FUZZ_USER}@example.com", "password": f"password{FUZZ_USER}"}
        response = self.schema["/api/login"]["POST"].Case(body=body).call()
        assert response.status_code == 200, response.text
        return str(response.json()["token"])


def _stage5_config(database_url: str, keyvalue_url: str) -> AppConfig:
    return make_config(
        database_url,
        server_name="fuzz-stage5",
        sessions="keyvalue",
        keyvalue_url=keyvalue_url,
        joins="app",
        query_cache=True,
        object_cache=True,
        charges="precomputed",
        stats_token=STATS_TOKEN,
        max_open_rentals=NO_RENTAL_LIMIT,
        pool_size=3,
    )


@pytest.fixture(scope="module", params=TARGETS)
def target(
    request: pytest.FixtureRequest, pg_server: DatabaseServer, kv_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    database_url = seed(pg_server.create_database(unique_name("fuzz")))
    if request.param == "stage0-asgi":
        config = make_config(
            database_url,
            server_name="fuzz-stage0",
            stats_token=STATS_TOKEN,
            max_open_rentals=NO_RENTAL_LIMIT,
            pool_size=3,
        )
        app = create_app(config)
        try:
            # Loading the document starts the app's lifespan in schemathesis's event loop.
            target = Target(name=request.param, schema=schemathesis.openapi.from_asgi("/openapi.json", app))
            assert target.schema.raw_schema == openapi_document(app.config)
            target.token = target.login()
            yield target
        finally:
            schemathesis_asgi.shutdown_lifespans()
    else:
        # The query cache's keys name statements, not databases: start from an empty key-value database.
        with contextlib.closing(redis.Redis.from_url(kv_url)) as client:
            client.flushdb()
        server = start_server(_stage5_config(database_url, kv_url), tmp_path_factory.mktemp("fuzz"))
        try:
            target = Target(name=request.param, schema=schemathesis.openapi.from_url(f"{server.url}/openapi.json"))
            target.token = target.login()
            yield target
        finally:
            stop_server(server)
        log = server.log.read_text()
        assert "Traceback" not in log, log[-3000:]
    by_operation: dict[str, dict[int, int]] = {}
    for (label, status), count in sorted(target.answers.items()):
        by_operation.setdefault(label, {})[status] = count
    summary = "; ".join(f"{label} {statuses}" for label, statuses in by_operation.items())
    print(f"\nfuzz {target.name}: {sum(target.answers.values())} cases: {summary}", file=sys.stderr)


@pytest.fixture
def fuzzed_schema(target: Target) -> schemathesis.BaseSchema:
    return target.schema


SCHEMA = schemathesis.pytest.from_fixture("fuzzed_schema")


@SCHEMA.parametrize()
@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
def test_the_api_keeps_its_document(case: schemathesis.Case, target: Target) -> None:
    headers: dict[str, str] = {}
    if case.operation.path == "/api/_stats":
        headers["Authorization"] = f"Bearer {STATS_TOKEN}"
    elif case.operation.definition.raw.get("security"):
        # Logging out ends the session, so each logout gets a session of its own.
        token = target.login() if case.operation.path == "/api/logout" else target.token
        headers["Authorization"] = f"Bearer {token}"
    response = case.call_and_validate(headers=headers, checks=CHECKS)
    target.answers[case.operation.label, response.status_code] += 1


@pytest.mark.parametrize("stats_token", [None, STATS_TOKEN])
def test_the_document_is_valid_and_lists_every_route(stats_token: str | None) -> None:
    config = AppConfig(database_url="postgresql://fuzz@127.0.0.1/fuzz", stats_token=stats_token, max_per_page=40)
    document = openapi_document(config)
    schemathesis.openapi.from_dict(document).validate()  # against the OpenAPI 3.1 meta-schema
    routes = {
        (method, route.path)
        for route in create_app(config).router.routes
        for method in getattr(route, "methods", set()) - {"HEAD"}
    }
    documented = {(method.upper(), path) for path, item in document["paths"].items() for method in item}
    assert documented == routes
    stats = document["paths"]["/api/_stats"]["get"]
    expected = ([{"opsToken": []}], True) if stats_token else ([], False)
    assert (stats["security"], "401" in stats["responses"]) == expected
    assert document["components"]["parameters"]["PerPage"]["schema"]["maximum"] == 40
