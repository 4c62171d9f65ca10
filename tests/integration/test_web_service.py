"""`scorer serve` as a real process: it scores like the model, rejects bad rows, and refuses what it should.

The processes start together once for the module (each takes a few seconds to import scikit-learn and
load its bundle); the limits are small (1 s request timeout, 50 rows, 64 KiB) so that every refusal is quick
to provoke. Requests go through ``http.client`` or, where a well-behaved client cannot misbehave enough,
a raw socket.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from scorer.bundle import build_bundle
from tests.fixtures.models import binary_data
from tests.fixtures.process import ScorerProcess
from tests.integration.unlisted_label_model import UNLISTED_LABEL, UnlistedLabelModel

pytestmark = pytest.mark.integration

TIMEOUT_S = 1.0
MAX_ROWS = 50
MAX_BYTES = 65536
LIMITS = {
    "SCORER_REQUEST_TIMEOUT_S": str(TIMEOUT_S),
    "SCORER_MAX_ROWS": str(MAX_ROWS),
    "SCORER_MAX_REQUEST_BYTES": str(MAX_BYTES),
}
JSON = {"Content-Type": "application/json"}


@dataclass
class Served:
    process: ScorerProcess
    host: str
    port: int

    @classmethod
    def when_ready(cls, process: ScorerProcess) -> Served:
        process.wait_for_log("serving on http://", timeout_s=90)
        host, port = re.search(r"serving on http://([^:]+):(\d+)", process.output()).groups()
        return cls(process, host, int(port))

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=15)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            return response.status, response.headers, response.read()
        finally:
            connection.close()

    def score(self, payload: Any) -> tuple[int, Any]:
        status, _, body = self.request("POST", "/score", json.dumps(payload).encode(), JSON)
        return status, json.loads(body)

    def raw(self, data: bytes, give_up_s: float = 10.0) -> tuple[bytes, float]:
        """Send ``data`` on a fresh connection, then read until the server closes it; returns what came and when."""
        started = time.monotonic()
        with socket.create_connection((self.host, self.port), timeout=give_up_s) as sock:
            sock.sendall(data)
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
        return received, time.monotonic() - started


def _status_and_error(raw: bytes) -> tuple[int, dict[str, str]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


@pytest.fixture(scope="module")
def services(trained, tmp_path_factory) -> Iterator[dict[str, Served]]:
    """binary (small limits), multiclass, regression, fragile (labels outside its classes, one connection at a time), to_stop."""
    logs = tmp_path_factory.mktemp("serve")
    binary = trained("binary")
    fragile_bundle = logs / "fragile-bundle"
    build_bundle(UnlistedLabelModel(binary.estimator), binary_data(), "label", "fragile", "1").save(fragile_bundle)
    specs = {
        "binary": (binary.path, LIMITS),
        "multiclass": (trained("multiclass").path, {}),
        "regression": (trained("regression").path, {}),
        "fragile": (fragile_bundle, {"SCORER_MAX_CONCURRENT_REQUESTS": "1", **LIMITS}),
        "to_stop": (binary.path, {}),
    }
    processes = {
        name: ScorerProcess(
            {"SCORER_MODEL": str(path), "SCORER_PORT": "0", **extra}, logs / f"{name}.log", command="serve"
        )
        for name, (path, extra) in specs.items()
    }
    try:
        yield {name: Served.when_ready(process) for name, process in processes.items()}
    finally:
        for process in processes.values():
            process.stop()


def _records(frame, n: int) -> list[dict[str, Any]]:
    return [{**row, "id": f"r{i}"} for i, row in enumerate(frame.iloc[:n].to_dict("records"))]


# ------------------------------------------------------------------------------------------------ scoring


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_every_prediction_equals_the_models_own_output(task, services, trained):
    model = trained(task)
    rows = model.frame.iloc[:40]
    before = int(time.time() * 1000)
    status, answer = services[task].score({"records": _records(model.frame, 40)})
    after = int(time.time() * 1000)

    assert status == 200 and answer["rejections"] == []
    assert answer["model_name"] == f"test-{task}" and answer["model_version"] == "1"
    predictions = answer["predictions"]
    assert [p["id"] for p in predictions] == [f"r{i}" for i in range(40)], "one prediction per row, in order"
    exact = {"rtol": 1e-12, "atol": 0}
    if task == "regression":
        np.testing.assert_allclose([p["scored_label"] for p in predictions], model.estimator.predict(rows), **exact)
        assert all(p["scored_probabilities"] is None and p["scored_probability"] is None for p in predictions)
    else:
        expected = model.estimator.predict_proba(rows)
        classes = [str(c) for c in model.estimator.classes_]
        got = np.array([[p["scored_probabilities"][c] for c in classes] for p in predictions])
        np.testing.assert_allclose(got, expected, **exact)
        assert [p["scored_label"] for p in predictions] == model.estimator.predict(rows).tolist()
        if task == "binary":
            np.testing.assert_allclose([p["scored_probability"] for p in predictions], expected[:, -1], **exact)
    assert all(before <= p["scored_at"] <= after for p in predictions), "scored_at is epoch milliseconds"
    assert set(predictions[0]) == {
        "id",
        "scored_label",
        "scored_probability",
        "scored_label_probability",
        "scored_probabilities",
        "model_name",
        "model_version",
        "scored_at",
    }, "the fields of schemas/prediction.avsc"


def test_bad_rows_are_rejected_while_the_good_ones_are_scored(services, trained):
    model = trained("binary")
    good = model.frame.iloc[:2].to_dict("records")
    records = [
        {**good[0], "id": "good"},
        {**good[0], "id": "text", "x0": "high"},
        {**good[0]},  # no id
        {**good[0], "id": "colour", "colour": "purple"},
        5,
        {key: value for key, value in {**good[0], "id": "short"}.items() if key != "x1"},
        {**good[1], "id": 7},
        {**good[0], "id": "nan", "x2": float("nan")},  # Python's json writes NaN
        {**good[0], "id": "flag", "x3": True},
    ]
    status, answer = services["binary"].score({"records": records})

    assert status == 200, "bad rows are rejections, not a failed request"
    assert [(r["index"], r["reason"]) for r in answer["rejections"]] == [
        (1, "malformed_body"),
        (2, "missing_id"),
        (3, "unknown_category"),
        (4, "malformed_body"),
        (5, "malformed_body"),
        (7, "invalid_value"),
        (8, "malformed_body"),
    ]
    details = {r["index"]: r["detail"] for r in answer["rejections"]}
    assert "x0" in details[1] and "x1 is missing" in details[5] and "purple" in details[3]
    assert [p["id"] for p in answer["predictions"]] == ["good", "7"]
    expected = model.estimator.predict_proba(model.frame.iloc[:2])[:, -1]
    np.testing.assert_allclose([p["scored_probability"] for p in answer["predictions"]], expected, rtol=1e-12)


def test_a_bare_list_is_accepted_and_an_empty_one_scores_nothing(services, trained):
    status, answer = services["binary"].score(_records(trained("binary").frame, 3))
    assert status == 200 and [p["id"] for p in answer["predictions"]] == ["r0", "r1", "r2"]
    assert services["binary"].score([]) == (200, {**answer, "predictions": [], "rejections": []})


def test_schema_says_what_to_send(services, trained):
    model = trained("binary")
    status, headers, body = services["binary"].request("GET", "/schema")
    schema = json.loads(body)

    assert status == 200 and headers["Content-Type"] == "application/json"
    assert schema == model.bundle.schema.reader_schema("id")
    row = model.frame.iloc[0]
    record = {f["name"]: (row[f["name"]] if f["name"] != "id" else "from-schema") for f in schema["fields"]}
    assert services["binary"].score([record])[1]["predictions"][0]["id"] == "from-schema"


def test_healthz_reports_the_loaded_model(services):
    status, _, body = services["binary"].request("GET", "/healthz")
    assert status == 200
    assert json.loads(body) == {"status": "ok", "model_name": "test-binary", "model_version": "1"}


def test_metrics_count_requests_and_records(services, trained):
    served = services["regression"]
    served.score(_records(trained("regression").frame, 3) + [{"id": "bad"}])
    status, _, body = served.request("GET", "/metrics")
    text = body.decode()
    assert status == 200
    assert re.search(r'^scorer_records_rejected_total\{reason="malformed_body"\} [1-9]', text, re.M)
    assert re.search(r'^scorer_http_requests_total\{code="200",endpoint="/score"\} [1-9]', text, re.M)


# ------------------------------------------------------------------------------------------------ hardening


def test_default_bind_is_loopback_and_the_port_is_logged(services):
    served = services["multiclass"]  # no SCORER_HOST given
    assert served.host == "127.0.0.1"
    assert f"serving on http://127.0.0.1:{served.port}" in served.process.output()
    tcp = Path("/proc/net/tcp")
    if tcp.exists():  # Linux: the listening socket's local address is 127.0.0.1, not 0.0.0.0
        listening = [line.split()[1] for line in tcp.read_text().splitlines()[1:] if line.split()[3] == "0A"]
        assert f"0100007F:{served.port:04X}" in listening
        assert f"00000000:{served.port:04X}" not in listening


def test_no_versions_in_the_server_header(services):
    _, headers, _ = services["binary"].request("GET", "/healthz")
    assert headers["Server"] == "scorer"


@pytest.mark.parametrize("size", [MAX_BYTES + 1, 8 << 20], ids=["just over", "more than the socket buffers"])
def test_a_body_over_the_limit_is_413_naming_the_setting(services, size):
    """Even a client that sends the whole body first (no Expect: 100-continue) reads the 413, not a reset."""
    status, _, body = services["binary"].request("POST", "/score", b" " * size, JSON)
    error = json.loads(body)
    assert status == 413 and error["error"] == "request_too_large"
    assert str(MAX_BYTES) in error["detail"] and "--max-request-bytes" in error["detail"]


@pytest.mark.parametrize("expect", ["Expect: 100-continue\r\n", ""])
def test_a_declared_size_over_the_limit_is_refused_before_the_body_is_sent(services, expect):
    head = f"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000000000\r\n{expect}\r\n"
    raw, elapsed = services["binary"].raw(head.encode())
    assert _status_and_error(raw)[0] == 413
    assert elapsed < TIMEOUT_S, "answered at once, without waiting for a body that never comes"


@pytest.mark.parametrize("expect", ["Expect: 100-continue\r\n", ""], ids=["expect", "no expect"])
@pytest.mark.parametrize(
    ("length", "status"),
    [("\u00b2", 400), ("-1", 400), ("5\r\nContent-Length: 6", 400), ("9" * 5000, 413)],
    ids=["superscript two", "negative", "two values", "5000 digits"],
)
def test_a_malformed_content_length_is_refused_with_a_json_error(services, expect, length, status):
    head = (
        f"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n{expect}\r\n"
    )
    got, error = _status_and_error(services["binary"].raw(head.encode())[0])
    assert got == status and error["error"] in {"invalid_content_length", "request_too_large"}
    assert len(error["detail"]) < 200


def test_more_rows_than_the_limit_is_413_naming_the_setting(services, trained):
    status, error = services["binary"].score(_records(trained("binary").frame, MAX_ROWS + 1))
    assert status == 413 and error["error"] == "too_many_rows"
    assert f"limit is {MAX_ROWS}" in error["detail"] and "--max-rows" in error["detail"]
    assert services["binary"].score(_records(trained("binary").frame, MAX_ROWS))[0] == 200


@pytest.mark.parametrize("framing", ["", "Transfer-Encoding: chunked\r\n"])
def test_a_post_without_content_length_is_411(services, framing):
    head = f"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{framing}\r\n"
    body = b"2\r\n[]\r\n0\r\n\r\n" if framing else b""
    status, error = _status_and_error(services["binary"].raw(head.encode() + body)[0])
    assert status == 411 and error["error"] == "length_required"


@pytest.mark.parametrize(
    "body",
    [b'{"records": [', b'{"rows": []}', b'{"records": 5}', b'"text"', b"[" * 20000, b'["\xff"]', b"\xff\xfe[\x00]\x00"],
    ids=["truncated", "wrong key", "not a list", "a string", "nested too deeply", "not utf-8", "utf-16"],
)
def test_invalid_json_or_the_wrong_shape_is_400(services, body):
    status, _, answer = services["binary"].request("POST", "/score", body, JSON)
    error = json.loads(answer)
    assert status == 400 and error["error"] in {"invalid_json", "invalid_request"} and error["detail"]


@pytest.mark.parametrize(
    ("method", "path", "status", "allow"),
    [
        ("GET", "/nope", 404, None),
        ("POST", "/", 404, None),
        ("GET", "/score", 405, "POST"),
        ("DELETE", "/score", 405, "POST"),
        ("POST", "/healthz", 405, "GET, HEAD"),
    ],
)
def test_unknown_paths_are_404_and_wrong_methods_405(services, method, path, status, allow):
    got, headers, body = services["binary"].request(method, path, b"[]", JSON)
    assert got == status and headers.get("Allow") == allow
    assert json.loads(body)["error"] == ("not_found" if status == 404 else "method_not_allowed")


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "application/json; charset=latin-1"]
)
def test_a_body_that_is_not_json_by_its_content_type_is_415(services, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    status, _, body = services["binary"].request("POST", "/score", b"[]", headers)
    assert status == 415 and json.loads(body)["error"] == "unsupported_media_type"


def test_a_slow_client_is_cut_off_at_the_timeout_and_the_next_request_is_served(services):
    served = services["binary"]
    head = b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    raw, elapsed = served.raw(head + b"[")  # 1 of 100 bytes, then silence
    assert TIMEOUT_S * 0.9 <= elapsed <= TIMEOUT_S + 2
    assert _status_and_error(raw) == (
        408,
        {
            "error": "request_timeout",
            "detail": "the body did not arrive within 1 s (--request-timeout-s / SCORER_REQUEST_TIMEOUT_S)",
        },
    )
    silent, elapsed = served.raw(b"")  # connects and sends nothing
    assert silent == b"" and elapsed <= TIMEOUT_S + 2
    assert served.request("GET", "/healthz")[0] == 200


def test_a_client_trickling_bytes_is_cut_off_at_the_deadline_too(services):
    """The timeout is a deadline for the whole request, not an idle timeout a byte now and then would renew."""
    served = services["binary"]
    started = time.monotonic()
    received = b""
    with socket.create_connection((served.host, served.port), timeout=0.2) as sock:
        sock.sendall(
            b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
        )
        while time.monotonic() - started < TIMEOUT_S + 5:
            try:
                sock.sendall(b" ")
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not chunk:
                break
            received += chunk
    assert time.monotonic() - started <= TIMEOUT_S + 2
    assert _status_and_error(received)[0] == 408


def test_connections_beyond_the_limit_wait_for_a_free_slot(services):
    served = services["fragile"]  # one connection at a time
    with socket.create_connection((served.host, served.port), timeout=10) as slow:
        slow.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\n")
        time.sleep(0.2)  # accepted, holding the only slot
        started = time.monotonic()
        status = served.request("GET", "/healthz")[0]
        waited = time.monotonic() - started
    assert status == 200, "the waiting connection is served, not refused"
    assert waited >= TIMEOUT_S * 0.7, "it waited for the slow client's deadline"


def test_a_row_the_model_labels_outside_its_classes_is_rejected_and_the_others_scored(services, trained):
    served = services["fragile"]
    good = {**trained("binary").frame.iloc[0].to_dict(), "id": "a"}

    status, answer = served.score([good, {**good, "id": "b", "x3": 500.0}])

    assert status == 200
    assert [p["id"] for p in answer["predictions"]] == ["a"]
    [rejection] = answer["rejections"]
    assert (rejection["index"], rejection["reason"]) == (1, "model_error")
    assert f"{UNLISTED_LABEL!r}, which is not one of its classes" in rejection["detail"]
    assert served.score([good])[0] == 200, "the service keeps serving"


# ------------------------------------------------------------------------------------------------ lifecycle


def test_sigterm_stops_the_service_with_exit_code_0(services):
    served = services["to_stop"]
    assert served.request("GET", "/healthz")[0] == 200
    served.process.sigterm()
    assert served.process.wait(30) == 0
    assert "stopped: requests" in served.process.output()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((served.host, served.port), timeout=2).close()


def test_a_taken_port_or_a_malformed_setting_fails_start_up_naming_it(services, trained):
    taken = str(services["binary"].port)
    env = {"PATH": "/usr/bin:/bin", "SCORER_MODEL": str(trained("binary").path)}
    run = [sys.executable, "-m", "scorer", "serve"]
    port = subprocess.run(run, env={**env, "SCORER_PORT": taken}, capture_output=True, text=True, timeout=90)
    assert port.returncode == 2 and "--port / SCORER_PORT: cannot listen on 127.0.0.1:" in port.stderr
    rows = subprocess.run(run, env={**env, "SCORER_MAX_ROWS": "lots"}, capture_output=True, text=True, timeout=90)
    assert rows.returncode == 2 and "SCORER_MAX_ROWS: has value 'lots'. Not a valid int" in rows.stderr
