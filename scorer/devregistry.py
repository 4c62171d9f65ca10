"""A small Confluent-compatible Avro schema registry for local development and tests.

It exists so ``scorer`` and its tests can run against a real HTTP registry without a JVM. It is **not**
for production: no replication, all state in one JSON file, and authentication only as far as tests of
clients' settings need it (optional HTTP basic auth and TLS, see ``make_server``). In production point
scorer at Confluent Schema Registry, Karapace, Apicurio (ccompat API) or Redpanda.

Implemented (Avro only, the Confluent REST API as confluent-kafka's ``SchemaRegistryClient`` uses it):
global schema ids shared across subjects, versions from 1 (``latest``/``-1``), register and lookup,
soft and permanent deletes, schemas by id (with their subjects and versions), global and per-subject
compatibility levels (all seven, decided by the ``avro`` package's checker), compatibility tests
(``verbose=true`` explains failures), Confluent error codes, and persistence to
``<state_dir>/registry.json`` so a restart keeps ids and versions.

Not implemented: JSON Schema and Protobuf, schema references, metadata and rule sets (data contracts),
contexts, modes other than READWRITE, import mode, ``normalize`` (schemas are always compared in a
whitespace- and key-order-insensitive form), tags, associations, guids, authorization (every known user
may do everything), client certificates (mTLS), clustering.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import os
import signal
import socket
import socketserver
import ssl
import sys
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import avro.schema
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType

from scorer.errors import RegistryError

__all__ = ["COMPATIBILITY_LEVELS", "CONTENT_TYPE", "DEFAULT_HOST", "RegistryHTTPError", "SchemaStore"]
__all__ += ["make_server", "read_users_file", "serve"]

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
# Confluent's three JSON types, plus octet-stream, which its OpenAPI description also lists for requests.
_ACCEPTED_TYPES = {CONTENT_TYPE, "application/vnd.schemaregistry+json", "application/json", "application/octet-stream"}
COMPATIBILITY_LEVELS = tuple(
    "NONE BACKWARD BACKWARD_TRANSITIVE FORWARD FORWARD_TRANSITIVE FULL FULL_TRANSITIVE".split()
)
_DEFAULT_LEVEL = "BACKWARD"
_INT_BOUNDS = {"int": 2**31, "long": 2**63}
_FLOAT_WORDS = ("NaN", "Infinity", "-Infinity")  # how Java Avro writes non-finite float defaults
_ERRORS: dict[int, tuple[int, str]] = {  # Confluent's error codes, HTTP statuses and wording
    40401: (404, "Subject '{}' not found."),
    40402: (404, "Version {} not found."),
    40403: (404, "Schema {} not found"),
    40404: (404, "Subject '{}' was soft deleted. Set permanent=true to delete permanently"),
    40405: (404, "Subject '{}' was not deleted first before being permanently deleted"),
    40407: (404, "Subject '{}' Version {} was not deleted first before being permanently deleted"),
    40408: (404, "Subject '{}' does not have subject-level compatibility configured"),
    # 40901 is INCOMPATIBLE_SCHEMA_ERROR_CODE in Confluent's current Errors.java; older releases sent 409 (the
    # HTTP status) as the code, so clients should key on the HTTP status, 409 in both.
    40901: (409, 'Schema being registered is incompatible with an earlier schema for subject "{}", details: {}'),
    42201: (422, "Invalid schema: {}"),
    42202: (
        422,
        "The specified version '{}' is not a valid version id. "
        'Allowed values are between [1, 2^31-1] and the string "latest"',
    ),
    42203: (422, "Invalid compatibility level {!r}. Valid values are: {}"),
}


class RegistryHTTPError(RegistryError):
    """A request the registry refuses: ``status`` is the HTTP status, ``error_code`` Confluent's code."""

    def __init__(self, status: int, error_code: int, message: str) -> None:
        super().__init__(message, status=status, error_code=error_code)


def _fail(code: int, *args: object) -> RegistryHTTPError:
    """Build the error Confluent sends for ``code``, so messages match what users search for."""
    status, template = _ERRORS[code]
    return RegistryHTTPError(status, code, template.format(*args))


def _version_number(raw: str) -> int | None:
    """Parse a version path segment; ``None`` means latest. Anything else invalid is 42202, like Confluent."""
    if raw in ("latest", "-1"):
        return None
    if not raw.isdigit() or not 1 <= int(raw) < 2**31:
        raise _fail(42202, raw)
    return int(raw)


def _valid_default(schema: avro.schema.Schema, value: Any) -> bool:
    """Whether a JSON ``value`` is a valid default for ``schema``, following Java Avro (so Confluent).

    A union default may match any branch, as Java Avro allows although the spec asks for the first.
    Enum defaults must be a symbol (Java only wants a string) since no reader could use anything else.
    """
    kind = schema.type
    if kind in _INT_BOUNDS:
        bound = _INT_BOUNDS[kind]
        return isinstance(value, int) and not isinstance(value, bool) and -bound <= value < bound
    if kind in ("float", "double"):
        return (isinstance(value, int | float) and not isinstance(value, bool)) or value in _FLOAT_WORDS
    if kind == "array":
        return isinstance(value, list) and all(_valid_default(schema.items, v) for v in value)
    if kind == "map":
        return isinstance(value, dict) and all(_valid_default(schema.values, v) for v in value.values())
    if kind == "union":
        return any(_valid_default(branch, value) for branch in schema.schemas)
    if kind in ("record", "error"):
        return isinstance(value, dict) and all(
            _valid_default(f.type, value[f.name]) if f.name in value else f.has_default for f in schema.fields
        )
    if kind == "enum":
        return value in schema.symbols
    simple = {"null": type(None), "boolean": bool, "string": str, "bytes": str, "fixed": str}
    return kind in simple and isinstance(value, simple[kind])


def _check_defaults(schema: avro.schema.Schema, seen: set[str]) -> None:
    """Reject invalid field defaults with 42201.

    The ``avro`` 1.12 parser accepts any JSON value as a default (``{"type": "string", "default": null}``
    parses) while Confluent's Java parser rejects it. A bad default only fails later, when a reader
    needs it, so we check here to fail at registration the way production does.
    """
    if schema.type in ("record", "error") and schema.fullname not in seen:
        seen.add(schema.fullname)
        for field in schema.fields:
            if field.has_default and not _valid_default(field.type, field.default):
                detail = f"{json.dumps(field.default)} is not a valid {json.dumps(field.type.to_json())}"
                raise _fail(42201, f"invalid default for field {field.name}: {detail}")
            _check_defaults(field.type, seen)
    elif schema.type == "union":
        for branch in schema.schemas:
            _check_defaults(branch, seen)
    elif schema.type in ("array", "map"):
        _check_defaults(schema.items if schema.type == "array" else schema.values, seen)


def _parse_request(body: Any) -> tuple[str, avro.schema.Schema, str]:
    """Validate a register/lookup/compatibility body; return (text, parsed schema, equality key).

    The key is the parsed schema's JSON with sorted keys and no whitespace. Not ``canonical_form``
    (Avro's Parsing Canonical Form): it drops defaults, docs and logical types, so adding a default
    to a field would look like "the same schema" and never create a new version.
    """
    if not isinstance(body, dict) or not isinstance(body.get("schema"), str) or not body["schema"].strip():
        raise _fail(42201, 'empty schema: the body must be a JSON object with a "schema" string')
    schema_type = str(body.get("schemaType") or "AVRO")
    if schema_type.upper() != "AVRO":
        raise _fail(42201, f"schema type {schema_type} is not supported by the dev registry (AVRO only)")
    if body.get("references"):
        raise _fail(42201, "references are not supported by the dev registry")
    if body.get("metadata") or body.get("ruleSet"):
        raise _fail(42201, "metadata and ruleSet are not supported by the dev registry")
    try:
        parsed = avro.schema.parse(body["schema"])
    except Exception as exc:  # whatever the parser chokes on, the client sent an invalid schema
        raise _fail(42201, exc) from exc
    _check_defaults(parsed, set())
    return body["schema"], parsed, json.dumps(parsed.to_json(), sort_keys=True, separators=(",", ":"))


class SchemaStore:
    """All registry state and rules, independent of HTTP; every public method is thread-safe.

    Methods return JSON-ready values and raise ``RegistryHTTPError`` for anything a client got wrong.
    A subject is a list of ``{"version", "id", "deleted"}`` entries: a soft delete only flags them, so
    schemas stay readable by id and version numbers keep counting up.
    """

    def __init__(self, path: Path | None = None) -> None:
        """Load state from ``path`` if it exists; with ``path=None`` the store lives in memory only."""
        self._path = path
        self._lock = threading.RLock()
        self._schemas: dict[int, str] = {}  # id -> schema text as first registered
        self._parsed: dict[int, avro.schema.Schema] = {}
        self._keys: dict[int, str] = {}  # id -> equality key
        self._ids_by_key: dict[str, int] = {}
        self._subjects: dict[str, list[dict[str, Any]]] = {}
        self._levels: dict[str, str] = {}
        self._global_level = _DEFAULT_LEVEL
        self._next_id = 1
        if path is not None and path.exists():
            self._load(path)

    def _load(self, path: Path) -> None:
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
            for raw_id, text in state["schemas"].items():
                self._remember(int(raw_id), *_parse_request({"schema": text}))
            self._subjects, self._levels = state["subjects"], state["subject_levels"]
            self._global_level, self._next_id = state["global_level"], state["next_id"]
        except (OSError, ValueError, KeyError, TypeError, RegistryError) as exc:
            raise RegistryError(f"cannot load dev registry state from {path}: {exc}") from exc

    def _save(self) -> None:
        """Write the whole state atomically (temp file + rename): a crash never leaves half a file."""
        if self._path is None:
            return
        state = {
            "next_id": self._next_id,
            "global_level": self._global_level,
            "subject_levels": self._levels,
            "schemas": {str(i): text for i, text in self._schemas.items()},
            "subjects": self._subjects,
        }
        tmp = self._path.with_name(self._path.name + ".tmp")
        tmp.write_text(json.dumps(state, indent=1), encoding="utf-8")
        os.replace(tmp, self._path)

    def _remember(self, schema_id: int, text: str, parsed: avro.schema.Schema, key: str) -> None:
        self._schemas[schema_id], self._parsed[schema_id], self._keys[schema_id] = text, parsed, key
        self._ids_by_key.setdefault(key, schema_id)

    def _visible(self, subject: str, deleted: bool = False) -> list[dict[str, Any]]:
        return [e for e in self._subjects.get(subject, []) if deleted or not e["deleted"]]

    def _require(self, subject: str, deleted: bool = False) -> list[dict[str, Any]]:
        """The subject's visible entries; none (never registered, or soft-deleted) is 40401."""
        visible = self._visible(subject, deleted)
        if not visible:
            raise _fail(40401, subject)
        return visible

    def _entry(self, subject: str, raw_version: str, deleted: bool = False) -> dict[str, Any]:
        number = _version_number(raw_version)
        visible = self._require(subject, deleted)
        found = visible[-1:] if number is None else [e for e in visible if e["version"] == number]
        if not found:
            raise _fail(40402, number)
        return found[0]

    def _schema_id(self, raw_id: str) -> int:
        """Parse an id that some subject (possibly soft-deleted) still uses, else 40403."""
        schema_id = int(raw_id) if raw_id.isdigit() else -1
        if not any(e["id"] == schema_id for entries in self._subjects.values() for e in entries):
            raise _fail(40403, raw_id)
        return schema_id

    def _level(self, subject: str) -> str:
        return self._levels.get(subject, self._global_level)

    def _describe(self, subject: str, entry: dict[str, Any]) -> dict[str, Any]:
        schema_id = entry["id"]
        return {"subject": subject, "version": entry["version"], "id": schema_id, "schema": self._schemas[schema_id]}

    def _problems(self, level: str, new: avro.schema.Schema, entries: list[dict[str, Any]]) -> list[str]:
        """Why ``new`` breaks ``level`` against each of ``entries`` ([] if it does not), per avro's checker."""
        base, problems = level.removesuffix("_TRANSITIVE"), []
        for entry in reversed(entries):
            old, version = self._parsed[entry["id"]], entry["version"]
            checks = []
            if base in ("BACKWARD", "FULL"):
                checks.append((new, old, f"the new schema cannot read data written with version {version}"))
            if base in ("FORWARD", "FULL"):
                checks.append((old, new, f"version {version} cannot read data written with the new schema"))
            for reader, writer, what in checks:
                result = ReaderWriterCompatibilityChecker().get_compatibility(reader, writer)
                if result.compatibility is not SchemaCompatibilityType.compatible:
                    kinds = ", ".join(sorted(i.name.upper() for i in result.incompatibilities))
                    where, detail = ", ".join(sorted(result.locations)), "; ".join(sorted(result.messages))
                    problems.append(f"{level}: {what}: {kinds} at {where} ({detail})")
        return problems

    @staticmethod
    def _targets(level: str, live: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The versions a registration is checked against: all for transitive levels, else the latest."""
        return live if level.endswith("_TRANSITIVE") else live[-1:]

    def subjects(self, deleted: bool = False, deleted_only: bool = False, prefix: str = "") -> list[str]:
        """Subject names, sorted; soft-deleted ones only on request."""
        with self._lock:
            names = []
            for name, entries in self._subjects.items():
                live = any(not e["deleted"] for e in entries)
                if (live and not deleted_only) or (not live and (deleted or deleted_only)):
                    names.append(name)
            return sorted(n for n in names if n.startswith(prefix))

    def versions(self, subject: str, deleted: bool = False) -> list[int]:
        """Version numbers of a subject (40401 if none is visible)."""
        with self._lock:
            return [e["version"] for e in self._require(subject, deleted)]

    def get_version(self, subject: str, raw_version: str, deleted: bool = False) -> dict[str, Any]:
        """One version: subject, version, id and schema text."""
        with self._lock:
            return self._describe(subject, self._entry(subject, raw_version, deleted))

    def register(self, subject: str, body: Any) -> dict[str, int]:
        """Register a schema under ``subject``: same schema, same id; incompatible, 409/40901."""
        text, parsed, key = _parse_request(body)
        with self._lock:
            live = self._visible(subject)
            for entry in live:
                if self._keys[entry["id"]] == key:
                    return {"id": entry["id"]}
            level = self._level(subject)
            problems = self._problems(level, parsed, self._targets(level, live))
            if problems:
                raise _fail(40901, subject, problems)
            schema_id = self._ids_by_key.get(key)
            if schema_id is None:
                schema_id, self._next_id = self._next_id, self._next_id + 1
                self._remember(schema_id, text, parsed, key)
            entries = self._subjects.setdefault(subject, [])
            version = max((e["version"] for e in entries), default=0) + 1
            entries.append({"version": version, "id": schema_id, "deleted": False})
            self._save()
            return {"id": schema_id}

    def lookup(self, subject: str, body: Any, deleted: bool = False) -> dict[str, Any]:
        """Is this schema registered under ``subject``? 40401 for no subject, 40403 for no such schema."""
        _, _, key = _parse_request(body)
        with self._lock:
            for entry in reversed(self._require(subject, deleted)):
                if self._keys[entry["id"]] == key:
                    return self._describe(subject, entry)
            raise RegistryHTTPError(404, 40403, "Schema not found")

    def delete_subject(self, subject: str, permanent: bool = False) -> list[int]:
        """Soft-delete a subject (its level survives), or remove it for good after a soft delete."""
        with self._lock:
            entries = self._subjects.get(subject, [])
            live = [e for e in entries if not e["deleted"]]
            if not entries:
                raise _fail(40401, subject)
            if permanent and live:
                raise _fail(40405, subject)
            if not permanent and not live:
                raise _fail(40404, subject)
            if permanent:
                del self._subjects[subject]
                self._levels.pop(subject, None)
            for entry in live:
                entry["deleted"] = True
            self._save()
            return [e["version"] for e in (entries if permanent else live)]

    def delete_version(self, subject: str, raw_version: str, permanent: bool = False) -> int:
        """Soft-delete one version, or remove it for good after a soft delete."""
        with self._lock:
            entry = self._entry(subject, raw_version, deleted=permanent)
            if permanent and not entry["deleted"]:
                raise _fail(40407, subject, entry["version"])
            if permanent:
                self._subjects[subject].remove(entry)
                if not self._subjects[subject]:
                    del self._subjects[subject]
            entry["deleted"] = True
            self._save()
            return entry["version"]

    def schema_by_id(self, raw_id: str) -> dict[str, str]:
        """The schema text for an id; still served after its subject was soft-deleted."""
        with self._lock:
            return {"schema": self._schemas[self._schema_id(raw_id)]}

    def schema_versions(self, raw_id: str, deleted: bool = False) -> list[dict[str, Any]]:
        """Every (subject, version) pair using an id."""
        with self._lock:
            schema_id = self._schema_id(raw_id)
            return [
                {"subject": name, "version": e["version"]}
                for name in sorted(self._subjects)
                for e in self._visible(name, deleted)
                if e["id"] == schema_id
            ]

    def schema_subjects(self, raw_id: str, deleted: bool = False, subject: str | None = None) -> list[str]:
        """Subjects using an id, optionally only ``subject``."""
        names = {pair["subject"] for pair in self.schema_versions(raw_id, deleted)}
        return sorted(n for n in names if subject is None or n == subject)

    def get_config(self, subject: str | None = None, default_to_global: bool = False) -> dict[str, str]:
        """The global level, or a subject's own (40408 if it has none, unless ``default_to_global``)."""
        with self._lock:
            if subject is not None and subject not in self._levels and not default_to_global:
                raise _fail(40408, subject)
            return {"compatibilityLevel": self._global_level if subject is None else self._level(subject)}

    def set_config(self, subject: str | None, body: Any) -> dict[str, str]:
        """Set the global or a subject's level (42203 unless one of the seven); echoes it back."""
        level = body.get("compatibility", body.get("compatibilityLevel")) if isinstance(body, dict) else None
        if not isinstance(level, str) or level.upper() not in COMPATIBILITY_LEVELS:
            raise _fail(42203, level, ", ".join(COMPATIBILITY_LEVELS))
        with self._lock:
            if subject is None:
                self._global_level = level.upper()
            else:
                self._levels[subject] = level.upper()
            self._save()
            return {"compatibility": level.upper()}

    def delete_config(self, subject: str | None = None) -> dict[str, str]:
        """Drop a subject's level so the global one applies, or reset the global one to BACKWARD."""
        with self._lock:
            if subject is None:
                old, self._global_level = self._global_level, _DEFAULT_LEVEL
            elif subject in self._levels:
                old = self._levels.pop(subject)
            else:
                raise _fail(40401, subject)
            self._save()
            return {"compatibilityLevel": old}

    def test_compatibility(
        self, subject: str, raw_version: str | None, body: Any, verbose: bool = False
    ) -> dict[str, Any]:
        """Would ``body`` be accepted? Against one version, or (``raw_version=None``) as registration would.

        A transitive level matters only without a version: ``latest`` means the latest one alone.
        A subject without versions accepts anything (the schema itself must still be valid).
        """
        if raw_version is not None:
            _version_number(raw_version)
        _, parsed, _ = _parse_request(body)
        with self._lock:
            live, level = self._visible(subject), self._level(subject)
            if not live:
                targets = []
            elif raw_version is None:
                targets = self._targets(level, live)
            else:
                targets = [self._entry(subject, raw_version)]
            problems = self._problems(level, parsed, targets)
        answer: dict[str, Any] = {"is_compatible": not problems}
        if verbose:
            answer["messages"] = problems
        return answer


class _Raw(str):
    """A response body sent as is: the ``/schema`` endpoints return the bare schema, not a JSON string."""


def _flag(query: dict[str, str], name: str) -> bool:
    return query.get(name, "").lower() == "true"


def _page(items: list[Any], query: dict[str, str]) -> list[Any]:
    """Apply Confluent's ``offset``/``limit`` pagination (a negative limit means all)."""
    offset = int(query["offset"]) if query.get("offset", "").isdigit() else 0
    limit = int(query["limit"]) if query.get("limit", "").isdigit() else -1
    return items[offset:] if limit < 0 else items[offset : offset + limit]


def _route(store: SchemaStore, method: str, path: list[str], q: dict[str, str], body: Any) -> Any:
    """Map one request onto the store; the result becomes the JSON response body."""
    deleted = _flag(q, "deleted")
    match method, path:
        case "GET", []:
            return {}
        case "GET", ["schemas", "types"]:
            return ["AVRO"]
        case "GET", ["schemas", "ids", schema_id]:
            return store.schema_by_id(schema_id)
        case "GET", ["schemas", "ids", schema_id, "schema"]:
            return _Raw(store.schema_by_id(schema_id)["schema"])
        case "GET", ["schemas", "ids", schema_id, "versions"]:
            return _page(store.schema_versions(schema_id, deleted), q)
        case "GET", ["schemas", "ids", schema_id, "subjects"]:
            return _page(store.schema_subjects(schema_id, deleted, q.get("subject")), q)
        case "GET", ["subjects"]:
            prefix = q.get("subjectPrefix", "").removeprefix(":*:")
            return _page(store.subjects(deleted, _flag(q, "deletedOnly") or _flag(q, "deleted_only"), prefix), q)
        case "POST", ["subjects", subject]:
            return store.lookup(subject, body, deleted)
        case "DELETE", ["subjects", subject]:
            return store.delete_subject(subject, _flag(q, "permanent"))
        case "GET", ["subjects", subject, "versions"]:
            return _page(store.versions(subject, deleted), q)
        case "POST", ["subjects", subject, "versions"]:
            return store.register(subject, body)
        case "GET", ["subjects", subject, "versions", version]:
            return store.get_version(subject, version, deleted)
        case "GET", ["subjects", subject, "versions", version, "schema"]:
            return _Raw(store.get_version(subject, version, deleted)["schema"])
        case "DELETE", ["subjects", subject, "versions", version]:
            return store.delete_version(subject, version, _flag(q, "permanent"))
        case "GET", ["config"]:
            return store.get_config()
        case "GET", ["config", subject]:
            return store.get_config(subject, _flag(q, "defaultToGlobal"))
        case "PUT", ["config", *rest] if len(rest) <= 1:  # rest: [] for global, [subject]
            return store.set_config(next(iter(rest), None), body)
        case "DELETE", ["config", *rest] if len(rest) <= 1:
            return store.delete_config(next(iter(rest), None))
        case "POST", ["compatibility", "subjects", subject, "versions", *rest] if len(rest) <= 1:
            return store.test_compatibility(subject, next(iter(rest), None), body, _flag(q, "verbose"))
        case "GET", ["mode"] | ["mode", _]:
            return {"mode": "READWRITE"}
        case "GET", ["contexts"]:
            return ["."]
    raise RegistryHTTPError(404, 404, f"HTTP 404 Not Found: {method} /{'/'.join(path)} is not served here")


class _Handler(BaseHTTPRequestHandler):
    """Thin HTTP layer: parse the request, call ``_route``, write JSON or a Confluent error."""

    server: _RegistryServer
    protocol_version = "HTTP/1.1"  # keep-alive, as clients' connection pools expect
    timeout = 60  # drop idle keep-alive connections rather than hold a thread forever
    disable_nagle_algorithm = True  # headers and body are two writes: avoid the 40 ms delayed-ACK stall

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):  # the TLS handshake runs here, in this request's thread
            self.request.settimeout(self.timeout)
            self.request.do_handshake()
        super().setup()

    def _authenticate(self) -> None:
        """With users configured, every request must carry HTTP basic auth of one of them, else 401."""
        users = self.server.users
        if users is None:
            return
        scheme, _, encoded = (self.headers.get("Authorization") or "").partition(" ")
        try:
            user, _, password = base64.b64decode(encoded, validate=True).decode("utf-8").partition(":")
        except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors
            user, password = "", ""
        expected = users.get(user)
        if scheme.lower() != "basic" or expected is None or not hmac.compare_digest(password, expected):
            raise RegistryHTTPError(401, 401, "Unauthorized")

    def _read_body(self) -> Any:
        """Read the body first in every case, so a refused request leaves the connection usable."""
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length > 0 else b""
        if not raw:
            return None
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if content_type and content_type not in _ACCEPTED_TYPES:
            raise RegistryHTTPError(415, 415, f"HTTP 415 Unsupported Media Type: use {CONTENT_TYPE}")
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise RegistryHTTPError(400, 400, f"Malformed JSON body: {exc}") from exc

    def _handle(self) -> None:
        url = urlsplit(self.path)
        path = [unquote(part) for part in url.path.split("/") if part]
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        try:
            body = self._read_body()
            self._authenticate()
            status, payload = 200, _route(self.server.store, self.command, path, query, body)
        except RegistryHTTPError as exc:
            status, payload = exc.status or 500, {"error_code": exc.error_code, "message": str(exc)}
        except Exception as exc:  # a bug must still answer in Confluent's error format
            log.exception("dev registry failed on %s %s", self.command, self.path)
            status, payload = 500, {"error_code": 50001, "message": f"Error in the backend data store: {exc}"}
        data = (payload if isinstance(payload, _Raw) else json.dumps(payload)).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(data)))
        if status == 401:
            self.send_header("WWW-Authenticate", 'Basic realm="dev registry"')
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = _handle  # http.server dispatches on these names

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's signature
        """Log requests at DEBUG: the default prints every request to stderr, drowning test output."""
        log.debug("%s %s", self.address_string(), format % args)


class _RegistryServer(ThreadingHTTPServer):
    """A threading HTTP server carrying the store, binding IPv4 or IPv6 as the host asks."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        store: SchemaStore,
        users: Mapping[str, str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.store = store
        self.users = dict(users) if users is not None else None
        self.ssl_context = ssl_context
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        connection, address = super().get_request()
        if self.ssl_context is not None:  # no handshake here: one slow client would stall every accept
            connection = self.ssl_context.wrap_socket(connection, server_side=True, do_handshake_on_connect=False)
        return connection, address

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that drops out or refuses our certificate is its problem: log it at DEBUG only."""
        error = sys.exc_info()[1]
        if isinstance(error, ssl.SSLError | ConnectionError | TimeoutError):
            log.debug("dev registry: connection from %s failed: %s", client_address, error)
            return
        super().handle_error(request, client_address)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a reverse DNS lookup that can stall for seconds.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)


def make_server(
    host: str,
    port: int,
    state_dir: Path,
    *,
    users: Mapping[str, str] | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
) -> ThreadingHTTPServer:
    """Bind (not yet serve) a dev registry keeping its state in ``state_dir/registry.json``.

    Pass ``DEFAULT_HOST`` (loopback) unless you must. ``port=0`` picks a free port (read it from
    ``server.server_address``). Run ``serve_forever()`` in a thread.

    ``users`` (user -> password) turns on HTTP basic auth for every request: a missing or wrong
    ``Authorization`` header gets 401 ``{"error_code": 401, "message": "Unauthorized"}``, as Confluent's
    registry answers. ``tls_cert`` (PEM, with the key unless ``tls_key`` is given) serves HTTPS instead of
    HTTP. Both exist to test clients' settings for real; they do not make this a production registry.
    """
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    context = None
    if tls_cert is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(tls_cert, tls_key)
    return _RegistryServer((host, port), SchemaStore(state_dir / "registry.json"), users, context)


def read_users_file(path: Path) -> dict[str, str]:
    """``user:password`` lines (``#`` comments and blank lines ignored), for ``make_server(users=...)``.

    A file rather than a flag so that passwords stay out of process lists.
    """
    users = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, password = line.partition(":")
        if not sep or not user:
            raise ValueError(f"{path}:{number} is not user:password")
        users[user] = password
    return users


def serve(
    host: str,
    port: int,
    state_dir: Path,
    *,
    users: Mapping[str, str] | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
) -> None:
    """Run a dev registry in the foreground until SIGTERM or SIGINT, then close it cleanly.

    Call it from the main thread: only the main thread may install signal handlers.
    """
    server = make_server(host, port, state_dir, users=users, tls_cert=tls_cert, tls_key=tls_key)

    def stop(signum: int, frame: object) -> None:
        # shutdown() waits for serve_forever() to return, and serve_forever() runs in this very thread:
        # calling it directly from the handler would deadlock.
        threading.Thread(target=server.shutdown, name="devregistry-shutdown", daemon=True).start()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    if host not in ("127.0.0.1", "::1", "localhost") and users is None:
        log.warning("dev registry bound to %s: it has no authentication, keep it off shared networks", host)
    bound_host, bound_port = server.server_address[:2]
    shown = f"[{bound_host}]" if ":" in str(bound_host) else bound_host
    scheme = "https" if tls_cert is not None else "http"
    print(f"dev registry listening on {scheme}://{shown}:{bound_port}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.server_close()
