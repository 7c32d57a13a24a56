"""The app's HTTP API as an OpenAPI 3.1 document, written by hand and served at ``GET /openapi.json``.

The document is data, not derived from the handlers: it states what the API promises (docs/api.md
in machine-readable form), and the fuzz tests hold the app to it -- every answer the app gives must
have a status listed here for its operation and a body that matches the listed schema. So it lists
every status an operation can answer, errors and 503 included, and gives parameters their real
bounds: ids are PostgreSQL integers (1..2**31-1), text is at most 512 characters without NUL, and
``per_page`` runs up to the config's ``max_per_page``. The handlers (``app.py``) enforce the same
bounds, taken from here.

Only the values a deployment may change come from the config: the paging bounds, and whether
``/api/_stats`` asks for the ops token (``stats_token``). Every response carries ``X-Served-By``.
"""

from __future__ import annotations

import copy
from typing import Any

from reference_app.config import AppConfig

OPENAPI_VERSION = "3.1.0"
API_VERSION = "1.0.0"
MAX_ID = 2**31 - 1  # ids are PostgreSQL integers
MAX_TEXT_CHARS = 512  # the longest email, password or category the app accepts
#: What an Idempotency-Key header may hold (a UUID fits; nothing that needs escaping anywhere).
IDEMPOTENCY_KEY_PATTERN = "^[A-Za-z0-9_-]{1,64}$"
MAX_BODY_BYTES = 16 * 1024  # the largest request body the app reads
NO_NUL = "^[^\\x00]*$"


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _schema(name: str) -> dict[str, str]:
    return _ref("schemas", name)


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON answer with the header every answer carries."""
    return {
        "description": description,
        "headers": {"X-Served-By": _ref("headers", "XServedBy")},
        "content": {"application/json": {"schema": schema}},
    }


def _error(description: str) -> dict[str, Any]:
    return _json(description, _schema("Error"))


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(status): _ref("responses", _ERROR_RESPONSES[status][0]) for status in statuses}


_ERROR_RESPONSES: dict[int, tuple[str, str]] = {
    400: ("BadRequest", "The request is malformed: a parameter or the body is not what the operation takes."),
    401: ("Unauthorized", "The Authorization header is missing, malformed, unknown, expired or logged out."),
    403: ("Forbidden", "The path names another user."),
    404: ("NotFound", "No such object (or none of yours)."),
    409: ("Conflict", "The request conflicts with the current state."),
    413: ("PayloadTooLarge", f"The request body is larger than {MAX_BODY_BYTES} bytes."),
    503: ("Unavailable", "The database or the key-value server is unavailable; try again."),
}

_ID = {"type": "integer", "minimum": 1, "maximum": MAX_ID}
_COUNT = {"type": "integer", "minimum": 0}
_TEXT = {"type": "string", "maxLength": MAX_TEXT_CHARS, "pattern": NO_NUL}
_DATE = {"type": "string", "format": "date"}


def _counters(*names: str) -> dict[str, Any]:
    return {
        "type": "object",
        "required": list(names),
        "properties": {name: _COUNT for name in names},
    }


def _schemas(config: AppConfig) -> dict[str, Any]:
    return {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {"error": {"type": "string", "minLength": 1, "pattern": "^[^\\n]*$"}},
            "additionalProperties": False,
        },
        "Health": {
            "type": "object",
            "required": ["status", "server"],
            "properties": {"status": {"const": "ok"}, "server": {"type": "string", "minLength": 1}},
            "additionalProperties": False,
        },
        "Credentials": {
            "type": "object",
            "required": ["email", "password"],
            "properties": {"email": _TEXT, "password": _TEXT},
        },
        "Profile": {
            "type": "object",
            "required": ["id", "email", "name", "member_since", "open_rentals", "total_rentals"],
            "properties": {
                "id": _ID,
                "email": {"type": "string"},
                "name": {"type": "string"},
                "member_since": _DATE,
                "open_rentals": _COUNT,
                "total_rentals": _COUNT,
            },
            "additionalProperties": False,
        },
        "Session": {
            "type": "object",
            "required": ["token", "expires_in", "user"],
            "properties": {
                "token": {"type": "string", "pattern": "^[A-Za-z0-9_-]{43,128}$"},
                "expires_in": {"type": "integer", "minimum": 1},
                "user": _schema("Profile"),
            },
            "additionalProperties": False,
        },
        "Categories": {
            "type": "object",
            "required": ["items"],
            "properties": {"items": {"type": "array", "items": {"type": "string"}, "uniqueItems": True}},
            "additionalProperties": False,
        },
        "BookSummary": {
            "type": "object",
            "required": ["id", "title", "category", "daily_price_cents", "authors"],
            "properties": {
                "id": _ID,
                "title": {"type": "string"},
                "category": {"type": "string"},
                "daily_price_cents": _COUNT,
                "authors": {"type": "array", "items": {"type": "string"}},
            },
            "additionalProperties": False,
        },
        "CatalogPage": {
            "type": "object",
            "required": ["items", "page", "per_page", "total"],
            "properties": {
                "items": {"type": "array", "items": _schema("BookSummary"), "maxItems": config.max_per_page},
                "page": _ID,
                "per_page": {"type": "integer", "minimum": 1, "maximum": config.max_per_page},
                "total": _COUNT,
            },
            "additionalProperties": False,
        },
        "Author": {
            "type": "object",
            "required": ["id", "name"],
            "properties": {"id": _ID, "name": {"type": "string"}},
            "additionalProperties": False,
        },
        "Book": {
            "type": "object",
            "required": ["id", "title", "category", "daily_price_cents", "copies", "available", "authors"],
            "properties": {
                "id": _ID,
                "title": {"type": "string"},
                "category": {"type": "string"},
                "daily_price_cents": _COUNT,
                "copies": _COUNT,
                "available": _COUNT,
                "authors": {"type": "array", "items": _schema("Author")},
            },
            "additionalProperties": False,
        },
        "RentRequest": {
            "type": "object",
            "required": ["book_id"],
            "properties": {"book_id": _ID},
        },
        "Rental": {
            "type": "object",
            "required": ["id", "book_id", "title", "authors", "rented_on", "returned_on", "daily_price_cents"],
            "properties": {
                "id": _ID,
                "book_id": _ID,
                "title": {"type": "string"},
                "authors": {"type": "array", "items": {"type": "string"}},
                "rented_on": _DATE,
                "returned_on": {"type": ["string", "null"], "format": "date"},
                "daily_price_cents": _COUNT,
            },
            "additionalProperties": False,
        },
        "Rentals": {
            "type": "object",
            "required": ["items"],
            "properties": {"items": {"type": "array", "items": _schema("Rental")}},
            "additionalProperties": False,
        },
        "Charges": {
            "type": "object",
            "required": ["user_id", "total_cents", "rental_charges_cents", "late_fees_cents", "rentals"],
            "properties": {
                "user_id": _ID,
                "total_cents": _COUNT,
                "rental_charges_cents": _COUNT,
                "late_fees_cents": _COUNT,
                "rentals": _COUNT,
            },
            "additionalProperties": False,
        },
        "CacheCounters": _counters("hits", "misses", "errors"),
        "Stats": {
            "type": "object",
            "description": "Counters of one app process (docs/api.md); more counters may appear.",
            "required": ["server", "pid", "queries", "reads", "cache", "query_cache", "object_cache"],
            "properties": {
                "server": {"type": "string"},
                "pid": {"type": "integer", "minimum": 1},
                "queries": {"type": "object", "additionalProperties": _COUNT},
                "reads": _counters("primary", "replicas", "primary_for_freshness"),
                "lsn_probes": _COUNT,
                "replica_failures": _COUNT,
                "known_replay_lsn": {"type": "object", "additionalProperties": _COUNT},
                "cache": _counters("hits", "misses"),
                "query_cache": {"anyOf": [_schema("CacheCounters"), {"type": "null"}]},
                "object_cache": {"anyOf": [_schema("CacheCounters"), {"type": "null"}]},
                "sessions_in_memory": _COUNT,
            },
        },
    }


def _parameters(config: AppConfig) -> dict[str, Any]:
    def path_id(name: str, what: str) -> dict[str, Any]:
        return {"name": name, "in": "path", "required": True, "description": what, "schema": _ID}

    return {
        "BookId": path_id("book_id", "a book's id"),
        "UserId": path_id("user_id", "a user's id: only your own is allowed"),
        "RentalId": path_id("rental_id", "a rental's id: only your own are found"),
        "Category": {
            "name": "category",
            "in": "query",
            "description": "only books of this category (empty: every category)",
            "schema": _TEXT,
        },
        "Page": {"name": "page", "in": "query", "schema": {**_ID, "default": 1}},
        "PerPage": {
            "name": "per_page",
            "in": "query",
            "schema": {
                "type": "integer",
                "minimum": 1,
                "maximum": config.max_per_page,
                "default": config.default_per_page,
            },
        },
        "IdempotencyKey": {
            "name": "Idempotency-Key",
            "in": "header",
            "description": "makes the write safe to retry: a request repeated with the same key answers with "
                           "what the first one did instead of acting twice",
            "schema": {"type": "string", "pattern": IDEMPOTENCY_KEY_PATTERN},
        },
        "RentalStatus": {
            "name": "status",
            "in": "query",
            "schema": {"type": "string", "enum": ["all", "open", "returned"], "default": "all"},
        },
    }


_USER: list[dict[str, list[str]]] = [{"session": []}]
_PUBLIC: list[dict[str, list[str]]] = []


def _paths(config: AppConfig) -> dict[str, Any]:
    stats: dict[str, Any] = {
        "operationId": "stats",
        "summary": "Counters of the answering process (for the measurements)",
        "security": [{"opsToken": []}] if config.stats_token else _PUBLIC,
        "responses": {"200": _json("The counters", _schema("Stats"))},
    }
    if config.stats_token:
        stats["responses"].update(_errors(401))
    return {
        "/healthz": {
            "get": {
                "operationId": "health",
                "summary": "Liveness, and which server answered",
                "security": _PUBLIC,
                "responses": {"200": _json("Alive", _schema("Health"))},
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "security": _PUBLIC,
                "responses": {"200": _json("The OpenAPI document", {"type": "object"})},
            }
        },
        "/api/login": {
            "post": {
                "operationId": "login",
                "summary": "Start a session",
                "security": _PUBLIC,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _schema("Credentials")}},
                },
                "responses": {
                    "200": _json("A new session and the user's profile", _schema("Session")),
                    **_errors(400, 401, 413, 503),
                },
            }
        },
        "/api/logout": {
            "post": {
                "operationId": "logout",
                "summary": "End the session (its token is refused from then on, on every server)",
                "security": _USER,
                "responses": {
                    "204": {
                        "description": "The session is over",
                        "headers": {"X-Served-By": _ref("headers", "XServedBy")},
                    },
                    **_errors(401, 503),
                },
            }
        },
        "/api/profile": {
            "get": {
                "operationId": "profile",
                "summary": "The caller's profile",
                "security": _USER,
                "responses": {"200": _json("The profile", _schema("Profile")), **_errors(401, 503)},
            }
        },
        "/api/categories": {
            "get": {
                "operationId": "categories",
                "summary": "Every book category, sorted",
                "security": _PUBLIC,
                "responses": {"200": _json("The categories", _schema("Categories")), **_errors(503)},
            }
        },
        "/api/books": {
            "get": {
                "operationId": "catalog",
                "summary": "One page of the catalog, ordered by id",
                "security": _PUBLIC,
                "parameters": [_ref("parameters", name) for name in ("Category", "Page", "PerPage")],
                "responses": {
                    "200": _json("The page (an unknown category gives an empty page 1)", _schema("CatalogPage")),
                    **_errors(400, 404, 503),
                },
            }
        },
        "/api/books/{book_id}": {
            "get": {
                "operationId": "book",
                "summary": "A book with its availability and authors",
                "security": _PUBLIC,
                "parameters": [_ref("parameters", "BookId")],
                "responses": {"200": _json("The book", _schema("Book")), **_errors(400, 404, 503)},
            }
        },
        "/api/users/{user_id}/rentals": {
            "get": {
                "operationId": "rentals",
                "summary": "The caller's rentals, newest first",
                "security": _USER,
                "parameters": [_ref("parameters", "UserId"), _ref("parameters", "RentalStatus")],
                "responses": {"200": _json("The rentals", _schema("Rentals")), **_errors(400, 401, 403, 503)},
            }
        },
        "/api/rentals": {
            "post": {
                "operationId": "rent",
                "summary": "Rent a copy of a book",
                "security": _USER,
                "parameters": [_ref("parameters", "IdempotencyKey")],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _schema("RentRequest")}},
                },
                "responses": {
                    "201": _json("The new rental", _schema("Rental")),
                    **_errors(400, 401, 404, 409, 413, 503),
                },
            }
        },
        "/api/rentals/{rental_id}/return": {
            "post": {
                "operationId": "return",
                "summary": "Return one of the caller's rentals",
                "security": _USER,
                "parameters": [_ref("parameters", "RentalId"), _ref("parameters", "IdempotencyKey")],
                "responses": {
                    "200": _json("The rental, returned today", _schema("Rental")),
                    **_errors(400, 401, 404, 409, 503),
                },
            }
        },
        "/api/users/{user_id}/charges": {
            "get": {
                "operationId": "charges",
                "summary": "The caller's charges to date",
                "security": _USER,
                "parameters": [_ref("parameters", "UserId")],
                "responses": {"200": _json("The charges", _schema("Charges")), **_errors(400, 401, 403, 503)},
            }
        },
        "/api/_stats": {"get": stats},
    }


def openapi_document(config: AppConfig) -> dict[str, Any]:
    """The OpenAPI document of an app running with ``config`` (a fresh copy: callers may change it)."""
    document = {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "scalesim reference app: book rentals",
            "version": API_VERSION,
            "description": "The book-rental API that scalesim deploys in every stage (docs/api.md). "
            "Errors are JSON objects with one field, `error`, holding one line.",
        },
        "paths": _paths(config),
        "components": {
            "schemas": _schemas(config),
            "parameters": _parameters(config),
            "responses": {name: _error(description) for name, description in _ERROR_RESPONSES.values()},
            "headers": {
                "XServedBy": {
                    "description": "The name of the app server that answered",
                    "required": True,
                    "schema": {"type": "string", "minLength": 1},
                }
            },
            "securitySchemes": {
                "session": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The token of a session from POST /api/login",
                },
                "opsToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The deployment's ops token (app config `stats_token`)",
                },
            },
        },
    }
    return copy.deepcopy(document)  # the schema fragments above are shared between operations
