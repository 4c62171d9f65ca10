"""The dev schema registry speaks the Confluent REST API the way clients and scripts expect."""

from __future__ import annotations

import contextlib
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scorer.devregistry import COMPATIBILITY_LEVELS, CONTENT_TYPE, make_server

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never route loopback via a proxy

V1 = {"type": "record", "name": "User", "namespace": "t", "fields": [{"name": "id", "type": "long"}]}
WITH_DEFAULT = {
    "type": "record",
    "name": "User",
    "namespace": "t",
    "fields": [{"name": "id", "type": "long"}, {"name": "email", "type": "string", "default": ""}],
}
NO_DEFAULT = {
    "type": "record",
    "name": "User",
    "namespace": "t",
    "fields": [{"name": "id", "type": "long"}, {"name": "email", "type": "string"}],
}


@contextlib.contextmanager
def running(state_dir: Path) -> Iterator[str]:
    """Serve a dev registry on a free loopback port for the duration of the block."""
    server = make_server("127.0.0.1", 0, state_dir)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield f"http://{host}:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running(tmp_path_factory.mktemp("registry")) as url:
        yield url


def call(url: str, method: str, path: str, body: Any = None, content_type: str = CONTENT_TYPE) -> tuple[int, Any]:
    """One request; returns (status, decoded JSON body), errors included."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": content_type} if data is not None else {}
    request = urllib.request.Request(url + path, data=data, method=method, headers=headers)  # noqa: S310
    try:
        with _OPENER.open(request, timeout=5) as response:
            assert response.headers["Content-Type"] == CONTENT_TYPE
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def register(url: str, subject: str, schema: Any, **extra: Any) -> tuple[int, Any]:
    text = schema if isinstance(schema, str) else json.dumps(schema)
    return call(url, "POST", f"/subjects/{subject}/versions", {"schema": text, **extra})


def test_root_and_types(base: str) -> None:
    assert call(base, "GET", "/") == (200, {})
    assert call(base, "GET", "/schemas/types") == (200, ["AVRO"])


def test_same_schema_gets_same_id_across_subjects_and_no_new_version(base: str) -> None:
    compact = json.dumps(V1, separators=(",", ":"))
    spaced = json.dumps(V1, indent=4)
    status, first = register(base, "ids-a", compact)
    assert status == 200 and set(first) == {"id"}
    assert register(base, "ids-b", spaced) == (200, first)
    assert register(base, "ids-a", spaced) == (200, first)
    assert call(base, "GET", "/subjects/ids-a/versions") == (200, [1])
    _, pairs = call(base, "GET", f"/schemas/ids/{first['id']}/versions")
    assert pairs == [{"subject": "ids-a", "version": 1}, {"subject": "ids-b", "version": 1}]
    assert call(base, "GET", f"/schemas/ids/{first['id']}/subjects") == (200, ["ids-a", "ids-b"])
    status, schema = call(base, "GET", f"/schemas/ids/{first['id']}")
    assert status == 200 and json.loads(schema["schema"]) == V1


def test_versions_latest_and_invalid_versions(base: str) -> None:
    register(base, "ver", V1)
    _, second = register(base, "ver", WITH_DEFAULT)
    assert call(base, "GET", "/subjects/ver/versions") == (200, [1, 2])
    for alias in ("latest", "-1", "2"):
        status, got = call(base, "GET", f"/subjects/ver/versions/{alias}")
        assert status == 200
        assert (got["subject"], got["version"], got["id"]) == ("ver", 2, second["id"])
        assert json.loads(got["schema"]) == WITH_DEFAULT
    status, raw = call(base, "GET", "/subjects/ver/versions/1/schema")
    assert (status, raw) == (200, V1)
    for bad in ("0", "-2", "abc"):
        status, error = call(base, "GET", f"/subjects/ver/versions/{bad}")
        assert (status, error["error_code"]) == (422, 42202)


def test_not_found_codes(base: str) -> None:
    register(base, "nf", V1)
    assert call(base, "GET", "/subjects/nope/versions")[1]["error_code"] == 40401
    assert call(base, "GET", "/subjects/nope/versions/1")[1]["error_code"] == 40401
    status, error = call(base, "GET", "/subjects/nf/versions/7")
    assert (status, error["error_code"]) == (404, 40402)
    status, error = call(base, "GET", "/schemas/ids/9999")
    assert (status, error["error_code"]) == (404, 40403)
    assert set(error) == {"error_code", "message"}


def test_lookup_under_subject(base: str) -> None:
    _, registered = register(base, "look", V1)
    status, found = call(base, "POST", "/subjects/look", {"schema": json.dumps(V1, indent=2)})
    assert status == 200
    assert (found["subject"], found["version"], found["id"]) == ("look", 1, registered["id"])
    assert json.loads(found["schema"]) == V1
    assert call(base, "POST", "/subjects/nobody", {"schema": json.dumps(V1)})[1]["error_code"] == 40401
    missing = call(base, "POST", "/subjects/look", {"schema": json.dumps(WITH_DEFAULT)})
    assert missing[0] == 404 and missing[1]["error_code"] == 40403


def test_backward_rejects_field_without_default_and_accepts_with_default(base: str) -> None:
    register(base, "compat", V1)
    status, error = register(base, "compat", NO_DEFAULT)
    assert status == 409 and error["error_code"] == 40901
    assert "email" in error["message"]
    assert register(base, "compat", WITH_DEFAULT)[0] == 200
    assert call(base, "GET", "/subjects/compat/versions") == (200, [1, 2])


def _three_versions(base: str, subject: str, level: str) -> None:
    """v1 {a}, v2 {a, b=0}: a reader needing b without a default can read v2 but not v1."""
    assert call(base, "PUT", f"/config/{subject}", {"compatibility": "NONE"})[0] == 200
    fields = [{"name": "a", "type": "int"}, {"name": "b", "type": "int", "default": 0}]
    for selected in ([fields[0]], fields):
        register(base, subject, {"type": "record", "name": "R", "fields": selected})
    assert call(base, "PUT", f"/config/{subject}", {"compatibility": level}) == (200, {"compatibility": level})


def test_transitive_checks_every_version_but_plain_only_the_latest(base: str) -> None:
    v3 = {"type": "record", "name": "R", "fields": [{"name": "a", "type": "int"}, {"name": "b", "type": "int"}]}
    _three_versions(base, "plain", "BACKWARD")
    _three_versions(base, "trans", "BACKWARD_TRANSITIVE")
    assert register(base, "plain", v3)[0] == 200
    status, error = register(base, "trans", v3)
    assert (status, error["error_code"]) == (409, 40901)
    # ``latest`` compares with the latest version only, even under a transitive level...
    body = {"schema": json.dumps(v3)}
    assert call(base, "POST", "/compatibility/subjects/trans/versions/latest", body)[1]["is_compatible"] is True
    # ...while a version-less test checks what registration would.
    assert call(base, "POST", "/compatibility/subjects/trans/versions", body)[1]["is_compatible"] is False
    status, verdict = call(base, "POST", "/compatibility/subjects/trans/versions/1?verbose=true", body)
    assert status == 200 and verdict["is_compatible"] is False and verdict["messages"]


def _record(*fields: dict[str, Any]) -> dict[str, Any]:
    return {"type": "record", "name": "R", "fields": list(fields)}


_ID, _SCORE = {"name": "id", "type": "long"}, {"name": "score", "type": "int"}
CHANGES = {  # each a change from _record(_ID, _SCORE)
    "add_field_without_default": _record(_ID, _SCORE, {"name": "email", "type": "string"}),
    "add_field_with_default": _record(_ID, _SCORE, {"name": "email", "type": "string", "default": ""}),
    "drop_field_without_default": _record(_ID),
    "widen_int_to_long": _record(_ID, {"name": "score", "type": "long"}),
}
# BACKWARD: the new schema reads old data (a new field needs a default; int data promotes to long).
# FORWARD: old schemas read new data (a dropped field needs a default there; a long does not fit an int).
# FULL: both. With a single earlier version the transitive levels decide exactly as the plain ones.
ACCEPTED = {
    "NONE": set(CHANGES),
    "BACKWARD": {"add_field_with_default", "drop_field_without_default", "widen_int_to_long"},
    "FORWARD": {"add_field_without_default", "add_field_with_default"},
    "FULL": {"add_field_with_default"},
}
NEW_CANNOT_READ_OLD = "the new schema cannot read data written with version 1"
OLD_CANNOT_READ_NEW = "version 1 cannot read data written with the new schema"


@pytest.mark.parametrize("change", sorted(CHANGES))
@pytest.mark.parametrize("level", COMPATIBILITY_LEVELS)
def test_every_level_accepts_exactly_the_changes_it_allows(base: str, level: str, change: str) -> None:
    subject = f"level-{level}-{change}".lower()
    assert call(base, "PUT", f"/config/{subject}", {"compatibility": level}) == (200, {"compatibility": level})
    assert register(base, subject, _record(_ID, _SCORE))[0] == 200
    plain = level.removesuffix("_TRANSITIVE")
    accepted = change in ACCEPTED[plain]
    body = {"schema": json.dumps(CHANGES[change])}
    _, dry_run = call(base, "POST", f"/compatibility/subjects/{subject}/versions", body)
    assert dry_run == {"is_compatible": accepted}, "the compatibility test must predict the registration"
    status, answer = register(base, subject, CHANGES[change])
    if accepted:
        assert status == 200 and set(answer) == {"id"}
        assert call(base, "GET", f"/subjects/{subject}/versions") == (200, [1, 2])
        return
    assert (status, answer["error_code"]) == (409, 40901)
    assert f"{level}: " in answer["message"]  # names the rule that refused it...
    # ...and which way the data cannot be read
    if plain in ("BACKWARD", "FULL") and change not in ACCEPTED["BACKWARD"]:
        assert NEW_CANNOT_READ_OLD in answer["message"]
    if plain in ("FORWARD", "FULL") and change not in ACCEPTED["FORWARD"]:
        assert OLD_CANNOT_READ_NEW in answer["message"]
    assert call(base, "GET", f"/subjects/{subject}/versions") == (200, [1])


@pytest.mark.parametrize(
    ("level", "accepted"),
    [("FORWARD", True), ("FORWARD_TRANSITIVE", False), ("FULL", True), ("FULL_TRANSITIVE", False)],
)
def test_forward_and_full_transitive_check_every_version(base: str, level: str, accepted: bool) -> None:
    """v1 {a, b}, v2 {a, b=0}, v3 {a}: a v2 reader fills the missing b with its default, a v1 reader cannot."""
    subject = f"history-{level}".lower()
    a, b = {"name": "a", "type": "int"}, {"name": "b", "type": "int"}
    assert call(base, "PUT", f"/config/{subject}", {"compatibility": "NONE"})[0] == 200
    for fields in ([a, b], [a, {**b, "default": 0}]):
        assert register(base, subject, _record(*fields))[0] == 200
    assert call(base, "PUT", f"/config/{subject}", {"compatibility": level})[0] == 200
    v3 = {"schema": json.dumps(_record(a))}
    # ``latest`` compares with v2 alone, whatever the level
    assert call(base, "POST", f"/compatibility/subjects/{subject}/versions/latest", v3)[1]["is_compatible"] is True
    assert call(base, "POST", f"/compatibility/subjects/{subject}/versions", v3)[1]["is_compatible"] is accepted
    status, answer = call(base, "POST", f"/subjects/{subject}/versions", v3)
    if accepted:
        assert status == 200
        assert call(base, "GET", f"/subjects/{subject}/versions") == (200, [1, 2, 3])
    else:
        assert (status, answer["error_code"]) == (409, 40901)
        assert OLD_CANNOT_READ_NEW in answer["message"] and "version 2" not in answer["message"]
        assert call(base, "GET", f"/subjects/{subject}/versions") == (200, [1, 2])


def test_compatibility_endpoint(base: str) -> None:
    register(base, "check", V1)
    ok = call(base, "POST", "/compatibility/subjects/check/versions/latest", {"schema": json.dumps(WITH_DEFAULT)})
    assert ok == (200, {"is_compatible": True})
    status, bad = call(
        base, "POST", "/compatibility/subjects/check/versions/1?verbose=true", {"schema": json.dumps(NO_DEFAULT)}
    )
    assert status == 200 and bad["is_compatible"] is False
    assert any("email" in message for message in bad["messages"])
    fresh = call(base, "POST", "/compatibility/subjects/fresh/versions/latest", {"schema": json.dumps(V1)})
    assert fresh == (200, {"is_compatible": True})
    status, error = call(base, "POST", "/compatibility/subjects/fresh/versions/latest", {"schema": "{nope"})
    assert (status, error["error_code"]) == (422, 42201)
    assert call(base, "POST", "/compatibility/subjects/check/versions/5", {"schema": '"int"'})[1]["error_code"] == 40402


def test_config_global_and_per_subject(base: str) -> None:
    assert call(base, "GET", "/config") == (200, {"compatibilityLevel": "BACKWARD"})
    status, error = call(base, "GET", "/config/cfg")
    assert (status, error["error_code"]) == (404, 40408)
    assert call(base, "GET", "/config/cfg?defaultToGlobal=true") == (200, {"compatibilityLevel": "BACKWARD"})
    assert call(base, "PUT", "/config/cfg", {"compatibility": "FULL_TRANSITIVE"})[0] == 200
    assert call(base, "GET", "/config/cfg") == (200, {"compatibilityLevel": "FULL_TRANSITIVE"})
    status, error = call(base, "PUT", "/config/cfg", {"compatibility": "SIDEWAYS"})
    assert (status, error["error_code"]) == (422, 42203)
    assert call(base, "DELETE", "/config/cfg") == (200, {"compatibilityLevel": "FULL_TRANSITIVE"})
    assert call(base, "GET", "/config/cfg?defaultToGlobal=true") == (200, {"compatibilityLevel": "BACKWARD"})
    try:
        assert call(base, "PUT", "/config", {"compatibility": "NONE"}) == (200, {"compatibility": "NONE"})
        assert call(base, "GET", "/config") == (200, {"compatibilityLevel": "NONE"})
        assert call(base, "GET", "/config/cfg?defaultToGlobal=true") == (200, {"compatibilityLevel": "NONE"})
    finally:
        call(base, "PUT", "/config", {"compatibility": "BACKWARD"})


def test_soft_delete_hides_subject_but_keeps_ids_and_version_numbers(base: str) -> None:
    _, first = register(base, "gone", V1)
    call(base, "PUT", "/config/gone", {"compatibility": "FORWARD"})
    assert call(base, "DELETE", "/subjects/gone") == (200, [1])
    assert "gone" not in call(base, "GET", "/subjects")[1]
    assert "gone" in call(base, "GET", "/subjects?deleted=true")[1]
    assert call(base, "GET", "/subjects/gone/versions")[1]["error_code"] == 40401
    assert call(base, "POST", "/subjects/gone", {"schema": json.dumps(V1)})[1]["error_code"] == 40401
    assert call(base, "GET", f"/schemas/ids/{first['id']}")[0] == 200
    assert call(base, "GET", "/config/gone") == (200, {"compatibilityLevel": "FORWARD"})
    assert register(base, "gone", V1) == (200, first)
    assert call(base, "GET", "/subjects/gone/versions") == (200, [2])


def test_permanent_delete_needs_soft_delete_first(base: str) -> None:
    register(base, "hard", {"type": "enum", "name": "HardOnly", "symbols": ["X"]})
    status, error = call(base, "DELETE", "/subjects/hard?permanent=true")
    assert (status, error["error_code"]) == (404, 40405)
    assert call(base, "DELETE", "/subjects/hard") == (200, [1])
    assert call(base, "DELETE", "/subjects/hard?permanent=true") == (200, [1])
    assert "hard" not in call(base, "GET", "/subjects?deleted=true")[1]


def test_delete_version_is_soft(base: str) -> None:
    register(base, "dv", V1)
    register(base, "dv", WITH_DEFAULT)
    assert call(base, "DELETE", "/subjects/dv/versions/2") == (200, 2)
    assert call(base, "GET", "/subjects/dv/versions") == (200, [1])
    assert call(base, "GET", "/subjects/dv/versions?deleted=true") == (200, [1, 2])
    assert call(base, "GET", "/subjects/dv/versions/2")[1]["error_code"] == 40402


def test_invalid_schemas_are_42201(base: str) -> None:
    bad_default = {"type": "record", "name": "B", "fields": [{"name": "s", "type": "string", "default": None}]}
    for schema in (bad_default, "{not json", {"type": "nonsense"}):
        status, error = register(base, "invalid", schema)
        assert (status, error["error_code"]) == (422, 42201), schema
    status, error = register(base, "invalid", V1, schemaType="PROTOBUF")
    assert (status, error["error_code"]) == (422, 42201) and "PROTOBUF" in error["message"]
    refs = [{"name": "x", "subject": "y", "version": 1}]
    assert register(base, "invalid", V1, references=refs)[1]["error_code"] == 42201
    assert call(base, "GET", "/subjects/invalid/versions")[1]["error_code"] == 40401


def test_valid_defaults_are_accepted(base: str) -> None:
    fields = [
        {"name": "n", "type": ["null", "string"], "default": None},
        {"name": "u", "type": ["null", "int"], "default": 3},
        {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["A", "B"]}, "default": "B"},
        {"name": "m", "type": {"type": "map", "values": "double"}, "default": {"x": 1}},
    ]
    assert register(base, "defaults", {"type": "record", "name": "D", "fields": fields}, references=[])[0] == 200


@pytest.mark.parametrize(
    "content_type", [CONTENT_TYPE, "application/vnd.schemaregistry+json", "application/json; charset=utf-8"]
)
def test_all_content_types_accepted(base: str, content_type: str) -> None:
    body = {"schema": json.dumps({"type": "fixed", "name": "F", "size": 2})}
    status, answer = call(base, "POST", "/subjects/ctype/versions", body, content_type=content_type)
    assert status == 200 and "id" in answer


def test_unknown_content_type_and_route(base: str) -> None:
    assert call(base, "POST", "/subjects/x/versions", {"schema": '"int"'}, content_type="text/xml")[0] == 415
    assert call(base, "GET", "/nowhere")[0] == 404


def test_restart_keeps_ids_versions_and_levels(tmp_path: Path) -> None:
    with running(tmp_path) as url:
        _, first = register(url, "keep", V1)
        _, second = register(url, "keep", WITH_DEFAULT)
        call(url, "PUT", "/config/keep", {"compatibility": "NONE"})
    assert (tmp_path / "registry.json").exists()
    with running(tmp_path) as url:
        assert call(url, "GET", "/subjects/keep/versions") == (200, [1, 2])
        assert call(url, "GET", "/subjects/keep/versions/latest")[1]["id"] == second["id"]
        assert call(url, "GET", "/config/keep") == (200, {"compatibilityLevel": "NONE"})
        assert register(url, "other", V1) == (200, first)
        _, third = register(url, "third", {"type": "string"})
        assert third["id"] not in (first["id"], second["id"])
