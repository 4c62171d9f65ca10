"""Unit tests of scorer.service's pure parts, ServeSettings and the `serve` command line (no sockets)."""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import threading

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from scorer import cli
from scorer.config import ServeSettings, env_name, flag_name, load_settings
from scorer.errors import ConfigError
from scorer.schema import Feature
from scorer.service import GENERIC_500, RequestRefused, ScoringService, is_loopback, parse_records, row_problem

FEATURES = [
    Feature("x", "double"),
    Feature("n", "long"),
    Feature("flag", "boolean"),
    Feature("city", "string"),
    Feature("note", "string", nullable=True),
]
ROW = {"id": "a", "x": 1.5, "n": 3, "flag": True, "city": "oslo", "note": None}


@pytest.fixture(autouse=True)
def _no_scorer_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("SCORER_")]:
        monkeypatch.delenv(key)


# ------------------------------------------------------------------------------------------------ the body


def test_records_come_from_an_object_or_a_bare_list() -> None:
    assert parse_records(b'{"records": [{"x": 1}]}', 10) == [{"x": 1}]
    assert parse_records(b'[{"x": 1}, 2]', 10) == [{"x": 1}, 2]
    assert parse_records(b"[]", 10) == []


@pytest.mark.parametrize(
    ("body", "code", "words"),
    [
        (b"{", "invalid_json", "not valid JSON"),
        (b'["\xff"]', "invalid_json", "not UTF-8"),
        (b"[" * 5000, "invalid_json", "nested too deeply"),
        (b"[" + b"9" * 5000 + b"]", "invalid_json", "number too long"),
        (b'{"records": [], "extra": 1}', "invalid_request", "'extra'"),
        (b'{"rows": []}', "invalid_request", "'rows'"),
        (b'{"records": {"x": 1}}', "invalid_request", "not an object"),
        (b"42", "invalid_request", "not a number (42)"),
    ],
)
def test_a_body_that_is_not_records_is_a_400_saying_why(body: bytes, code: str, words: str) -> None:
    with pytest.raises(RequestRefused) as refused:
        parse_records(body, 10)
    assert (refused.value.status, refused.value.code) == (400, code)
    assert words in refused.value.detail


def test_more_rows_than_the_limit_is_a_413_naming_the_limit_and_the_setting() -> None:
    with pytest.raises(RequestRefused) as refused:
        parse_records(b"[1, 2, 3]", max_rows=2)
    assert refused.value.status == 413
    assert "3 records; the limit is 2 (--max-rows / SCORER_MAX_ROWS)" in refused.value.detail


# ------------------------------------------------------------------------------------------------ the rows


def test_a_row_of_the_training_types_passes_and_extra_fields_are_ignored() -> None:
    assert row_problem(ROW, FEATURES, "id") is None
    assert row_problem({**ROW, "unused": [1, 2]}, FEATURES, "id") is None
    assert row_problem({k: v for k, v in ROW.items() if k != "note"}, FEATURES, "id") is None, "nullable: may be absent"
    assert row_problem({**ROW, "x": 2}, FEATURES, "id") is None, "an integer is a fine double (Avro promotes it)"
    assert row_problem({**ROW, "x": float("nan")}, FEATURES, "id") is None, "NaN is the Scorer's invalid_value"
    assert row_problem({**ROW, "id": 7}, FEATURES, "id") is None
    assert row_problem({k: v for k, v in ROW.items() if k != "id"}, FEATURES, "id") is None, "the Scorer's missing_id"


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"x": "1.5"}, "x is a string ('1.5'); the model reads a number"),
        ({"x": True}, "x is true; the model reads a number"),
        ({"x": 10**400}, "x is a number"),
        ({"n": 3.0}, "n is a number (3.0); the model reads an integer"),
        ({"n": 2**63}, "n is a number"),
        ({"flag": 1}, "flag is a number (1); the model reads true or false"),
        ({"city": ["oslo"]}, "city is a list; the model reads a string"),
        ({"city": None}, "city is null; the model reads a string"),
        ({"id": 1.5}, "id is a number (1.5); an id is a string or an integer"),
        ({"id": {"k": 1}}, "id is an object; an id is a string or an integer"),
        ({"n": "x" * 100}, "n is a string ('" + "x" * 36 + "...); the model reads an integer"),
    ],
)
def test_a_value_avro_would_not_decode_is_named_with_what_the_model_reads(change: dict, problem: str) -> None:
    found = row_problem({**ROW, **change}, FEATURES, "id")
    assert found is not None and found.startswith(problem)


def test_a_missing_feature_and_a_row_that_is_not_an_object_are_problems() -> None:
    assert row_problem({"id": "a", "x": 1.0}, FEATURES, "id") == "n is missing; the model reads an integer"
    assert row_problem([1, 2], FEATURES, "id") == "a record must be a JSON object of features, not a list"


def test_loopback_addresses() -> None:
    assert all(map(is_loopback, ["127.0.0.1", "127.3.2.1", "::1", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "10.1.2.3", "scorer.example.com"]))  # noqa: S104


# ------------------------------------------------------------------------------------------------ scoring


def test_score_merges_its_own_rejections_with_the_scorers_in_row_order(trained) -> None:
    model = trained("binary")
    registry = CollectorRegistry()
    service = ScoringService(ServeSettings(model=str(model.path)), registry, bundle=model.bundle)
    good = model.frame.iloc[:2].to_dict("records")
    body = json.dumps([{**good[0], "id": "a"}, {**good[0], "id": "b", "colour": "teal"}, "x", {**good[1], "id": 9}])

    answer = service.score(body.encode())

    assert [(r["index"], r["reason"]) for r in answer["rejections"]] == [(1, "unknown_category"), (2, "malformed_body")]
    assert [p["id"] for p in answer["predictions"]] == ["a", "9"]
    np.testing.assert_allclose(
        [p["scored_probability"] for p in answer["predictions"]],
        model.estimator.predict_proba(model.frame.iloc[:2])[:, -1],
        rtol=1e-12,
    )
    assert registry.get_sample_value("scorer_records_scored_total") == 2
    assert registry.get_sample_value("scorer_records_rejected_total", {"reason": "malformed_body"}) == 1
    assert json.loads(service.input_schema) == model.bundle.schema.reader_schema("id")


class _BrokenScorer:
    """Stands in for a bug inside the scoring code: the one failure no input can cause on purpose."""

    def score(self, *_args: object) -> None:
        raise RuntimeError("secret detail of /srv/models at scoring.py line 42")


def test_an_unexpected_error_is_a_generic_500_with_the_traceback_only_in_the_log(
    trained, caplog: pytest.LogCaptureFixture
) -> None:
    model = trained("binary")
    service = ScoringService(ServeSettings(model=str(model.path), port=0), CollectorRegistry(), bundle=model.bundle)
    service.start()
    server = threading.Thread(target=service.run, daemon=True)
    server.start()
    try:
        service.scorer = _BrokenScorer()  # type: ignore[assignment]
        host, port = service.server.server_address[:2]
        connection = http.client.HTTPConnection(host, port, timeout=10)
        row = {**model.frame.iloc[0].to_dict(), "id": "a"}
        connection.request("POST", "/score", json.dumps([row]), {"Content-Type": "application/json"})
        response = connection.getresponse()
        body = response.read().decode()
        connection.close()
    finally:
        service.request_stop()
        server.join(10)
    assert response.status == 500
    assert json.loads(body) == {"error": "internal_error", "detail": GENERIC_500}
    for leak in ("Traceback", "RuntimeError", "secret", "scoring.py", "/srv"):
        assert leak not in body
    assert "RuntimeError: secret detail" in caplog.text, "the operator finds the traceback in the log"
    assert not server.is_alive(), "the service still stops cleanly"


# ------------------------------------------------------------------------------------------------ settings


def test_the_defaults_are_the_hardened_ones() -> None:
    settings = load_settings(ServeSettings, {"model": "m"}, environ={})
    assert settings.host == "127.0.0.1", "loopback unless the operator says otherwise"
    assert (settings.port, settings.max_request_bytes, settings.max_rows) == (8000, 1 << 20, 1000)
    assert (settings.request_timeout_s, settings.max_concurrent_requests, settings.id_field) == (10.0, 16, "id")
    assert settings.model_threads == 1, "as in scorer run: concurrent requests must not oversubscribe the cores"


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({}, "--model / SCORER_MODEL: is required"),
        ({"SCORER_MODEL": "m", "SCORER_PORT": "70000"}, "--port / SCORER_PORT: has value 70000; ports are 0-65535"),
        ({"SCORER_MODEL": "m", "SCORER_PORT": "-1"}, "SCORER_PORT: has value '-1'; it must be at least 0"),
        ({"SCORER_MODEL": "m", "SCORER_MAX_ROWS": "lots"}, "SCORER_MAX_ROWS: has value 'lots'. Not a valid int"),
        ({"SCORER_MODEL": "m", "SCORER_REQUEST_TIMEOUT_S": "0"}, "SCORER_REQUEST_TIMEOUT_S: has value '0'; it must"),
        ({"SCORER_MODEL": "m", "SCORER_MAX_ROW": "5"}, "SCORER_MAX_ROW: is not a setting of this command"),
        ({"SCORER_MODEL": "m", "SCORER_INPUT_TOPIC": "t"}, "SCORER_INPUT_TOPIC: is not a setting of this command"),
    ],
)
def test_a_wrong_setting_fails_naming_it(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_settings(ServeSettings, {}, environ=environ)
    assert str(error.value).startswith(message)


def test_serve_help_documents_every_setting(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main(["serve", "--help"])
    assert done.value.code == 0
    text = "".join(capsys.readouterr().out.split())  # argparse wraps lines, also at hyphens
    for spec in dataclasses.fields(ServeSettings):
        assert flag_name(spec.name) in text and env_name(spec.name) in text, spec.name
        assert "".join(spec.metadata["help"].split()) in text, spec.name
    assert "default127.0.0.1]" in text and "default1048576]" in text


def test_a_malformed_flag_exits_2_with_one_line_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["serve", "--model", "m", "--max-request-bytes", "1MB"]) == 2
    assert capsys.readouterr().err == "scorer: error: --max-request-bytes: has value '1MB'. Not a valid int\n"


def test_the_service_imports_no_kafka_code() -> None:
    """It calls down into the core and config/metrics only (house style: imports point down, no Kafka)."""
    import ast  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    import scorer.service  # noqa: PLC0415

    tree = ast.parse(Path(scorer.service.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    ours = {name for name in imported if name.startswith("scorer")}
    assert ours <= {
        f"scorer.{m}" for m in ("bundle", "config", "errors", "metrics", "runtime", "schema", "scoring", "types")
    }
    assert not any(name.startswith("confluent_kafka") for name in imported)
