"""The exception tree and the reasons a record can be rejected.

Every failure scorer raises is a ``ScorerError``; adapters translate third-party errors into it once
(``raise ... from exc``), so services never see ``KafkaException`` or raw HTTP errors::

    ScorerError
    ├── ConfigError (ValueError)        a setting is wrong; ``setting`` names it
    ├── BundleError                     a model bundle cannot be built or trusted
    ├── SchemaError                     a schema is invalid or incompatible; ``fields`` lists the differences
    ├── RegistryError                   the schema registry refused or could not be reached
    │   └── RegistryUnavailable         network-level failure: retry with backoff
    ├── KafkaClientError                the broker or client failed
    │   └── DeliveryError               an output record was not acknowledged
    └── ScoringError                    the model failed on a batch

Rejections are not exceptions: a bad *record* becomes a ``Rejection`` (see ``types.py``) carrying a
``RejectReason``. The reason's value is the dead-letter ``scorer.reason`` header and the ``reason``
label of ``scorer_records_rejected_total``, so it is part of the public contract.
"""

from __future__ import annotations

import enum

__all__ = [
    "BundleError",
    "ConfigError",
    "DeliveryError",
    "KafkaClientError",
    "RegistryError",
    "RegistryUnavailable",
    "RejectReason",
    "SchemaError",
    "ScorerError",
    "ScoringError",
]


class ScorerError(Exception):
    """Base class of every error scorer raises on purpose."""


class ConfigError(ScorerError, ValueError):
    """A setting is missing or malformed. ``setting`` names it the way the user wrote it."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(f"{setting}: {message}")
        self.setting = setting


class BundleError(ScorerError):
    """A model bundle cannot be built, loaded or trusted."""


class SchemaError(ScorerError):
    """A schema is invalid, or a writer schema cannot be read as the training schema."""

    def __init__(self, message: str, fields: list[str] | None = None) -> None:
        super().__init__(message)
        self.fields = fields or []


class RegistryError(ScorerError):
    """The schema registry answered with an error (``status`` and Confluent ``error_code``)."""

    def __init__(self, message: str, status: int | None = None, error_code: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code


class RegistryUnavailable(RegistryError):
    """The registry could not be reached at all; callers retry with backoff."""


class KafkaClientError(ScorerError):
    """The Kafka client or broker failed in a way the service must handle."""

    def __init__(self, message: str, fatal: bool = False, retriable: bool = False) -> None:
        super().__init__(message)
        self.fatal = fatal
        self.retriable = retriable


class DeliveryError(KafkaClientError):
    """An output record was not acknowledged by the broker."""


class ScoringError(ScorerError):
    """The model raised while scoring a batch."""


class RejectReason(enum.StrEnum):
    """Why a record went to the dead-letter topic. Values are stable: they are header values and labels."""

    EMPTY_VALUE = "empty_value"
    RECORD_TOO_LARGE = "record_too_large"
    BAD_MAGIC_BYTE = "bad_magic_byte"
    TRUNCATED_FRAME = "truncated_frame"
    UNKNOWN_SCHEMA_ID = "unknown_schema_id"
    INCOMPATIBLE_SCHEMA = "incompatible_schema"
    MALFORMED_BODY = "malformed_body"
    MISSING_ID = "missing_id"
    INVALID_VALUE = "invalid_value"
    UNKNOWN_CATEGORY = "unknown_category"
    MODEL_ERROR = "model_error"
    OUTPUT_REJECTED = "output_rejected"
