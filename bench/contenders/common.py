"""What the two hand-written contenders share: arguments, client settings, model and output schema.

Both write the same prediction record as scorer (schemas/prediction.avsc with ``scored_label`` typed like
the label), registered under ``<output>-value`` and framed the Confluent way, keyed by the input key, so
that every contender does the same encoding work and writes the same bytes per record.
"""

from __future__ import annotations

import argparse
import json
import signal
import time
from pathlib import Path
from typing import Any

import joblib
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

REPO = Path(__file__).resolve().parents[2]
GROUP_TIMEOUTS = {"session.timeout.ms": "6000", "heartbeat.interval.ms": "1000"}


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--registry", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--model", required=True, type=Path, help="a scorer bundle directory (model.joblib)")
    parser.add_argument("--group", required=True)
    parser.add_argument(
        "--consumer-config", action="append", default=[], metavar="KEY=VALUE", help="extra consumer settings"
    )
    return parser.parse_args()


def consumer_config(args: argparse.Namespace, **settings: Any) -> dict[str, Any]:
    extra = dict(item.split("=", 1) for item in args.consumer_config)
    return {
        "bootstrap.servers": args.bootstrap,
        "group.id": args.group,
        "auto.offset.reset": "earliest",
        "log_level": 2,
        **GROUP_TIMEOUTS,
        **settings,
        **extra,
    }


def producer_config(args: argparse.Namespace) -> dict[str, Any]:
    return {"bootstrap.servers": args.bootstrap, "log_level": 2}


def load_model(bundle_dir: Path) -> tuple[Any, str, str, list[str]]:
    """The fitted pipeline, its name and version, and its feature columns."""
    meta = json.loads((bundle_dir / "bundle.json").read_text())
    model = joblib.load(bundle_dir / "model.joblib")  # our own file, written by the benchmark
    return model, meta["name"], meta["version"], list(model.feature_names_in_)


def prediction_schema(label_type: str) -> dict[str, Any]:
    schema = json.loads((REPO / "schemas" / "prediction.avsc").read_text())
    for spec in schema["fields"]:
        if spec["name"] == "scored_label":
            spec["type"] = label_type
    return schema


def register_output(registry: SchemaRegistryClient, output_topic: str, schema: dict[str, Any]) -> int:
    return int(registry.register_schema(f"{output_topic}-value", Schema(json.dumps(schema), "AVRO")))


def label_type(classes: Any) -> str:
    sample = classes[0].item() if hasattr(classes[0], "item") else classes[0]
    return {bool: "boolean", int: "long", float: "double"}.get(type(sample), "string")


class Stop:
    """Set by SIGTERM/SIGINT: the loop finishes its current message or batch and leaves."""

    def __init__(self) -> None:
        self.requested = False
        signal.signal(signal.SIGTERM, self._set)
        signal.signal(signal.SIGINT, self._set)

    def _set(self, *_args: Any) -> None:
        self.requested = True


def now_ms() -> int:
    return int(time.time() * 1000)
