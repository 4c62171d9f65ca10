"""Contender 1, "naive": the tutorial loop, one message at a time.

poll one message -> fastavro decode with the writer schema fetched once -> ``pd.DataFrame([record])`` ->
``predict_proba`` -> fastavro encode of the prediction -> produce. Auto-commit (the client default), no
batching anywhere. The stage functions are what ``bench.stages`` times in memory.
"""

from __future__ import annotations

import io
import json
import struct
from typing import Any

import fastavro
import pandas as pd
from confluent_kafka import Consumer, Producer
from confluent_kafka.schema_registry import SchemaRegistryClient

from bench.contenders import common

HEADER = struct.Struct(">bI")


def decode(value: bytes, writer: Any) -> dict[str, Any]:
    return fastavro.schemaless_reader(io.BytesIO(value[5:]), writer, None)


def to_frame(record: dict[str, Any], features: list[str]) -> pd.DataFrame:
    return pd.DataFrame([record])[features]


def predict(model: Any, frame: pd.DataFrame) -> Any:
    return model.predict_proba(frame)[0]


def encode(
    prefix: bytes, schema: Any, record_id: str, probabilities: Any, classes: Any, name: str, version: str
) -> bytes:
    best = int(probabilities.argmax())
    prediction = {
        "id": record_id,
        "scored_label": classes[best].item(),
        "scored_probability": float(probabilities[-1]),
        "scored_label_probability": float(probabilities[best]),
        "scored_probabilities": {str(c): float(p) for c, p in zip(classes, probabilities, strict=True)},
        "model_name": name,
        "model_version": version,
        "scored_at": common.now_ms(),
    }
    out = io.BytesIO()
    out.write(prefix)
    fastavro.schemaless_writer(out, schema, prediction)
    return out.getvalue()


def main() -> None:
    args = common.parse_args(__doc__ or "")
    model, name, version, features = common.load_model(args.model)
    classes = model.classes_
    registry = SchemaRegistryClient({"url": args.registry})
    writer = fastavro.parse_schema(json.loads(registry.get_latest_version(f"{args.input}-value").schema.schema_str))
    output_schema = common.prediction_schema(common.label_type(classes))
    prefix = HEADER.pack(0, common.register_output(registry, args.output, output_schema))
    parsed_output = fastavro.parse_schema(output_schema)

    consumer = Consumer(common.consumer_config(args))
    producer = Producer(common.producer_config(args))
    consumer.subscribe([args.input])
    stop = common.Stop()
    try:
        while not stop.requested:
            message = consumer.poll(1.0)
            if message is None or message.error() is not None:
                continue
            record = decode(message.value(), writer)
            probabilities = predict(model, to_frame(record, features))
            value = encode(prefix, parsed_output, record["id"], probabilities, classes, name, version)
            producer.produce(args.output, key=message.key(), value=value)
            producer.poll(0)
    finally:
        producer.flush(30)
        consumer.close()


if __name__ == "__main__":
    main()
