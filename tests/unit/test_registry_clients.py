"""confluent-kafka's own registry client and Avro serdes work unchanged against the dev registry."""

from __future__ import annotations

import json
import struct
import threading
from collections.abc import Iterator

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from scorer.devregistry import make_server

FEATURES = json.dumps(
    {
        "type": "record",
        "name": "Features",
        "namespace": "scorer.test",
        "fields": [
            {"name": "id", "type": "string"},
            {"name": "amount", "type": "double"},
            {"name": "country", "type": ["null", "string"], "default": None},
        ],
    }
)
FEATURES_V2 = json.dumps(
    {
        **json.loads(FEATURES),
        "fields": [*json.loads(FEATURES)["fields"], {"name": "age", "type": "int", "default": 0}],
    }
)
BREAKING = json.dumps({**json.loads(FEATURES), "fields": [{"name": "score", "type": "float"}]})


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SchemaRegistryClient]:
    server = make_server("127.0.0.1", 0, tmp_path_factory.mktemp("registry"))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    sr = SchemaRegistryClient({"url": f"http://{host}:{port}"})
    try:
        yield sr
    finally:
        sr.close()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_serializer_round_trip_with_auto_register(client: SchemaRegistryClient) -> None:
    ctx = SerializationContext("payments", MessageField.VALUE)
    record = {"id": "a1", "amount": 12.5, "country": "NL"}
    data = AvroSerializer(client, FEATURES)(record, ctx)
    registered = client.get_latest_version("payments-value")
    assert data[0] == 0
    assert struct.unpack(">I", data[1:5])[0] == registered.schema_id
    assert AvroDeserializer(client)(data, ctx) == record


def test_register_lookup_and_get_schema(client: SchemaRegistryClient) -> None:
    schema = Schema(FEATURES, "AVRO")
    first = client.register_schema("clients-value", schema)
    assert client.register_schema("clients-value", Schema(json.dumps(json.loads(FEATURES), indent=2))) == first
    found = client.lookup_schema("clients-value", schema)
    assert (found.subject, found.version, found.schema_id) == ("clients-value", 1, first)
    assert json.loads(client.get_schema(first).schema_str) == json.loads(FEATURES)
    latest = client.get_latest_version("clients-value")
    assert (latest.version, latest.schema_id) == (1, first)
    assert "clients-value" in client.get_subjects()


def test_compatibility_settings_and_checks(client: SchemaRegistryClient) -> None:
    client.register_schema("compat-value", Schema(FEATURES, "AVRO"))
    client.set_compatibility("compat-value", "FULL")
    assert client.get_compatibility("compat-value") == "FULL"
    assert client.test_compatibility("compat-value", Schema(FEATURES_V2, "AVRO")) is True
    assert client.test_compatibility("compat-value", Schema(BREAKING, "AVRO")) is False
    with pytest.raises(Exception, match="incompatible") as excinfo:
        client.register_schema("compat-value", Schema(BREAKING, "AVRO"))
    assert excinfo.value.http_status_code == 409


def test_delete_subject(client: SchemaRegistryClient) -> None:
    client.register_schema("doomed-value", Schema(FEATURES, "AVRO"))
    assert client.delete_subject("doomed-value") == [1]
    assert "doomed-value" not in client.get_subjects()
    assert client.delete_subject("doomed-value", permanent=True) == [1]
