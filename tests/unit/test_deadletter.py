"""Unit tests of scorer.deadletter: the headers that say why a record was rejected and where it came from."""

from __future__ import annotations

from scorer.deadletter import dead_letter_headers
from scorer.errors import RejectReason
from scorer.types import Rejection, SourceRef


def test_headers_say_why_where_and_which_model() -> None:
    rejection = Rejection(3, RejectReason.INCOMPATIBLE_SCHEMA, 'age: written as "string"', schema_id=17)
    headers = dead_letter_headers(rejection, SourceRef("features", 2, 1234), "churn:5")
    assert headers == [
        ("scorer.reason", b"incompatible_schema"),
        ("scorer.detail", b'age: written as "string"'),
        ("scorer.source.topic", b"features"),
        ("scorer.source.partition", b"2"),
        ("scorer.source.offset", b"1234"),
        ("scorer.model", b"churn:5"),
        ("scorer.schema.id", b"17"),
    ]


def test_no_schema_id_header_without_a_frame() -> None:
    headers = dict(dead_letter_headers(Rejection(0, RejectReason.EMPTY_VALUE, "no value"), SourceRef("t", 0, 0), "m"))
    assert "scorer.schema.id" not in headers
    assert headers["scorer.reason"] == b"empty_value"


def test_original_headers_are_kept_first_and_old_scorer_headers_replaced() -> None:
    original = [
        ("traceparent", b"00-abc-def-01"),
        ("content-type", None),
        ("scorer.reason", b"malformed_body"),  # from an earlier trip through the dead-letter topic
        ("scorer.detail", b"old detail"),
    ]
    rejection = Rejection(0, RejectReason.UNKNOWN_CATEGORY, "city='tokyo' was not seen in training")
    headers = dead_letter_headers(rejection, SourceRef("in", 0, 9), "m:1", original)
    assert headers[:2] == [("traceparent", b"00-abc-def-01"), ("content-type", b"")]
    assert [k for k, _ in headers].count("scorer.reason") == 1
    assert dict(headers)["scorer.reason"] == b"unknown_category"
    assert dict(headers)["scorer.detail"] == b"city='tokyo' was not seen in training"


def test_long_detail_is_cut_to_valid_utf8() -> None:
    detail = "city=" + "é" * 3000  # 6005 bytes; a cut at 4000 would fall inside a character
    value = dict(dead_letter_headers(Rejection(0, RejectReason.UNKNOWN_CATEGORY, detail), SourceRef("t", 0, 1), "m"))[
        "scorer.detail"
    ]
    assert len(value) <= 4000
    assert detail.startswith(value.decode("utf-8"))
    assert len(value) >= 3998
