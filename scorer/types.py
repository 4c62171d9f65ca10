"""Small frozen value types shared by every layer: where a record came from and why it was rejected."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from scorer.errors import RejectReason

__all__ = ["Rejection", "SourceRef"]


class SourceRef(NamedTuple):
    """Where an input record came from. For files and HTTP, ``topic`` names the source and ``offset`` the row.

    A named tuple (immutable like the dataclasses here, but several times cheaper to build): there is one
    per input record on the hot path.
    """

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class Rejection:
    """A record that cannot be scored: it ends in the dead-letter topic (or the error report), never dropped.

    ``index`` is the record's position in the batch it came from, so the caller can find its key, raw bytes
    and ``SourceRef`` without this core type knowing about Kafka.
    """

    index: int
    reason: RejectReason
    detail: str
    schema_id: int | None = None
