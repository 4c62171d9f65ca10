"""Dead-letter records: the rejected input, unchanged, with headers that say why and where it came from.

The value and key are the original bytes (so a fixed consumer can replay them as they were); the
original headers are kept, and scorer adds:

    scorer.reason            a RejectReason value, e.g. malformed_body
    scorer.detail            a human-readable sentence
    scorer.source.topic      input topic
    scorer.source.partition  input partition (decimal)
    scorer.source.offset     input offset (decimal)
    scorer.schema.id         writer schema id, when the frame had one
    scorer.model             model name and version that rejected it

May import: errors, types. Third-party: none.
"""

from __future__ import annotations

from collections.abc import Sequence

from scorer.types import Rejection, SourceRef

__all__ = ["dead_letter_headers"]


def dead_letter_headers(
    rejection: Rejection,
    ref: SourceRef,
    model: str,
    original: Sequence[tuple[str, bytes | None]] | None = None,
) -> list[tuple[str, bytes]]:
    """Headers of the dead-letter record for ``rejection``.

    >>> from scorer.errors import RejectReason
    >>> headers = dead_letter_headers(Rejection(0, RejectReason.EMPTY_VALUE, "no value"), SourceRef("in", 2, 9), "m:1")
    >>> dict(headers)["scorer.reason"], dict(headers)["scorer.source.offset"]
    (b'empty_value', b'9')
    """
    headers = [(key, value or b"") for key, value in (original or []) if not key.startswith("scorer.")]
    headers += [
        ("scorer.reason", rejection.reason.value.encode()),
        # cut at 4000 bytes without splitting a UTF-8 character, so consumers can always decode it
        ("scorer.detail", rejection.detail.encode("utf-8", "replace")[:4000].decode("utf-8", "ignore").encode()),
        ("scorer.source.topic", ref.topic.encode()),
        ("scorer.source.partition", str(ref.partition).encode()),
        ("scorer.source.offset", str(ref.offset).encode()),
        ("scorer.model", model.encode()),
    ]
    if rejection.schema_id is not None:
        headers.append(("scorer.schema.id", str(rejection.schema_id).encode()))
    return headers
