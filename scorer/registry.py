"""Schema registry adapter over confluent-kafka's ``SchemaRegistryClient``.

The client already speaks the REST API, retries transport errors with backoff and caches schemas by id;
this module narrows it to the three questions scorer asks (writer schema by id, latest schema of a
subject, register a schema) and translates its errors once, so services see ``RegistryError`` (the
registry said no) or ``RegistryUnavailable`` (it could not be reached).

May import: errors. Third-party: confluent_kafka.schema_registry.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from scorer.errors import ConfigError, RegistryError, RegistryUnavailable

__all__ = ["LatestSchema", "Registry", "retry_unavailable"]

T = TypeVar("T")


@dataclass(frozen=True)
class LatestSchema:
    schema_id: int
    version: int
    schema: dict[str, Any]


@contextmanager
def _translated(what: str) -> Iterator[None]:
    try:
        yield
    except SchemaRegistryError as exc:
        if exc.http_status_code in (401, 403):  # a setting to fix, not an outage to wait out
            raise ConfigError(
                "--schema-registry-basic-auth / SCORER_SCHEMA_REGISTRY_BASIC_AUTH",
                f"the registry refused the credentials for {what} (HTTP {exc.http_status_code})",
            ) from exc
        raise RegistryError(f"{what}: {exc.error_message}", exc.http_status_code, exc.error_code) from exc
    except Exception as exc:  # noqa: BLE001 - the client raises httpx transport errors, OSError or timeouts
        raise RegistryUnavailable(
            f"{what}: the schema registry cannot be reached ({type(exc).__name__}: {exc})"
        ) from exc


class Registry:
    """The three registry calls scorer makes. ``schema_text`` is a ``codec.SchemaLookup``."""

    def __init__(self, config: dict[str, Any], timeout_s: float = 10.0) -> None:
        try:
            self._client = SchemaRegistryClient({"timeout": timeout_s, **config})
        except (ValueError, TypeError) as exc:
            raise ConfigError("--schema-registry-url", str(exc)) from exc
        self.url = config["url"]

    def schema_text(self, schema_id: int) -> str:
        """The writer schema registered under ``schema_id`` (cached by the client)."""
        with _translated(f"schema id {schema_id}"):
            return str(self._client.get_schema(schema_id).schema_str)

    def latest(self, subject: str) -> LatestSchema:
        with _translated(f"latest schema of subject {subject!r}"):
            registered = self._client.get_latest_version(subject)
        return LatestSchema(registered.schema_id, registered.version, json.loads(registered.schema.schema_str))

    def register(self, subject: str, schema: dict[str, Any]) -> int:
        """Register ``schema`` under ``subject`` (idempotent: the same schema keeps its id)."""
        with _translated(f"register under {subject!r}"):
            return int(self._client.register_schema(subject, Schema(json.dumps(schema), "AVRO")))

    def close(self) -> None:
        self._client.__exit__()


def retry_unavailable(
    call: Callable[[], T],
    should_stop: Callable[[], bool],
    on_retry: Callable[[RegistryUnavailable, float], None],
    max_backoff_s: float = 10.0,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``call`` until the registry answers, backing off exponentially while it is unavailable.

    Raises the last ``RegistryUnavailable`` if ``should_stop()`` turns true while waiting.
    """
    backoff = 0.2
    while True:
        try:
            return call()
        except RegistryUnavailable as exc:
            if should_stop():
                raise
            on_retry(exc, backoff)
            sleep(backoff)
            backoff = min(backoff * 2, max_backoff_s)
