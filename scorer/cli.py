"""The ``scorer`` command line: one subcommand per job, errors as one line that names what to fix.

Exit codes: 0 done, 1 runtime failure, 2 a setting is wrong, 3 the model or schemas do not fit.

May import: anything (top layer).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scorer import __version__
from scorer.config import (
    ENV_PREFIX,
    EvaluateSettings,
    KafkaSettings,
    LabelsSettings,
    RunSettings,
    ServeSettings,
    env_name,
    flag_name,
    load_settings,
)
from scorer.errors import BundleError, ConfigError, SchemaError, ScorerError

__all__ = ["main"]

log = logging.getLogger("scorer")

KAFKA_ENV = f"{ENV_PREFIX}KAFKA_<KEY>"
"""librdkafka pass-through has no single variable: one per setting (``SCORER_KAFKA_SASL_USERNAME``)."""

SETTINGS_GUIDE = f"""\
Every setting below is a flag, a {ENV_PREFIX}* environment variable (named in
its help) or a key in the TOML file given with --config or {ENV_PREFIX}CONFIG
(the flag's name in snake_case: max_batch_size = 5000). Precedence: flags,
then environment, then the config file, then the defaults shown. A misspelt
{ENV_PREFIX}* variable or file key stops start-up.

librdkafka client settings pass through unchanged. Give them in the [kafka]
table of the config file ("security.protocol" = "SASL_SSL"), as one
{KAFKA_ENV} variable each (dots become underscores:
{ENV_PREFIX}KAFKA_SASL_USERNAME=alice sets sasl.username), with
--kafka-config KEY=VALUE (repeatable), or in a librdkafka properties file
(--kafka-config-file). The same precedence holds, with the properties file
below the [kafka] table.

Secrets are refused on the command line, where process lists would show them:
give sasl.password, ssl.key.password and the like as
{ENV_PREFIX}KAFKA_SASL_PASSWORD, in the [kafka] table or in the properties
file. Schema registry credentials (user:password) go in
{ENV_PREFIX}SCHEMA_REGISTRY_BASIC_AUTH or as schema_registry_basic_auth in the
config file; --schema-registry-ca names a CA bundle for the registry's TLS.
Secrets are redacted wherever settings are logged.
"""


def _description(summary: str) -> str:
    """A command's one-line summary, then how its settings are given (``--help`` keeps the line breaks)."""
    return f"{summary}\n\n{SETTINGS_GUIDE}"


def add_settings_arguments(parser: argparse.ArgumentParser, cls: type[KafkaSettings | ServeSettings]) -> None:
    """One flag per settings field, with its environment variable and default in the help."""
    hints = typing.get_type_hints(cls)
    parser.add_argument(
        "--config", type=Path, help="TOML file of settings (keys as the flags, snake_case) [env SCORER_CONFIG]"
    )
    for spec in dataclasses.fields(cls):
        default = spec.default if spec.default is not dataclasses.MISSING else None
        shown = f"; default {default}" if default not in (None, "", {}) else ""
        env = f"{KAFKA_ENV}, one per setting" if spec.name == "kafka_config" else env_name(spec.name)
        help_text = f"{spec.metadata['help']} [env {env}{shown}]"
        hint = hints[spec.name]
        if spec.name == "kafka_config":
            parser.add_argument(flag_name(spec.name), action="append", metavar="KEY=VALUE", help=help_text)
        elif hint is bool:
            parser.add_argument(
                flag_name(spec.name), action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        elif typing.get_origin(hint) is typing.Literal:
            parser.add_argument(flag_name(spec.name), choices=typing.get_args(hint), help=help_text)
        else:
            parser.add_argument(flag_name(spec.name), metavar=spec.name.upper(), help=help_text)


def _settings(cls: type[Any], args: argparse.Namespace) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    flags = {k: v for k, v in vars(args).items() if k in names}
    config = args.config or (Path(p) if (p := os.environ.get("SCORER_CONFIG")) else None)
    return load_settings(cls, flags, config_file=config)


def _setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # its request lines would log registry URLs


def cmd_run(args: argparse.Namespace) -> int:
    settings: RunSettings = _settings(RunSettings, args)  # first: a wrong setting fails before slow imports
    from scorer.pipeline import ScoringPipeline  # noqa: PLC0415 - keeps `scorer --help` fast

    return _serve(ScoringPipeline(settings), settings)


def cmd_evaluate(args: argparse.Namespace) -> int:
    settings: EvaluateSettings = _settings(EvaluateSettings, args)
    from scorer.sidecar import EvaluationSidecar  # noqa: PLC0415

    return _serve(EvaluationSidecar(settings), settings)


def cmd_serve(args: argparse.Namespace) -> int:
    settings: ServeSettings = _settings(ServeSettings, args)
    from scorer.service import ScoringService  # noqa: PLC0415

    return _serve(ScoringService(settings), settings)


def _serve(service: Any, settings: KafkaSettings | ServeSettings) -> int:
    """Run a long-lived service: logging, SIGTERM/SIGINT to its ``request_stop``, ``start()``, ``run()``."""
    _setup_logging(settings.log_level)
    log.info("settings: %r", settings)
    signal.signal(signal.SIGTERM, service.request_stop)
    signal.signal(signal.SIGINT, service.request_stop)
    service.start()
    service.run()
    return 0


def cmd_labels(args: argparse.Namespace) -> int:
    from scorer.bundle import read_table  # noqa: PLC0415
    from scorer.labels import publish_labels  # noqa: PLC0415

    settings: LabelsSettings = _settings(LabelsSettings, args)
    _setup_logging(settings.log_level)
    if not args.file.is_file():
        raise ConfigError("FILE", f"{args.file} does not exist")
    frame = read_table(args.file)
    count = publish_labels(
        settings,
        frame,
        settings.labels_topic,
        args.id_column,
        args.label_column,
        args.event_time_column,
        args.label_type,
        args.rate,
        progress=lambda n: print(f"{n} labels sent", file=sys.stderr),
    )
    print(f"{count} labels published to {settings.labels_topic}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    settings: KafkaSettings = _settings(KafkaSettings, args)
    from scorer.sample import sample_topic, write_table  # noqa: PLC0415

    _setup_logging("WARNING")
    frame = sample_topic(settings, args.topic, args.count)
    if args.out:
        write_table(frame, args.out)
        print(f"{len(frame)} records of {args.topic} written to {args.out}")
    elif frame.empty:
        print(f"{args.topic} is empty")
    else:
        with pd_options():
            print(frame.to_string(index=False))
    return 0


def pd_options() -> Any:
    import pandas as pd  # noqa: PLC0415

    return pd.option_context("display.width", 250, "display.max_columns", None, "display.max_colwidth", 48)


def cmd_bundle(args: argparse.Namespace) -> int:
    import json  # noqa: PLC0415

    import joblib  # noqa: PLC0415

    from scorer.bundle import META_FILE, build_bundle, read_table  # noqa: PLC0415

    _setup_logging()
    if not args.model.is_file():
        raise ConfigError("MODEL", f"{args.model} does not exist")
    if not args.training_data.is_file():
        raise ConfigError("--training-data", f"{args.training_data} does not exist")
    estimator = joblib.load(args.model)  # the user's own file: trusted by definition of this command
    frame = read_table(args.training_data)
    bundle = build_bundle(estimator, frame, args.label, args.name, args.version, args.task, args.positive_class)
    bundle.save(args.out, format=args.format)
    print(f"bundle {bundle.name} {bundle.version} ({bundle.task}, {args.format}) written to {args.out}")
    if args.format == "skops":
        # saving vouches for these types: say which, so that the author can review them
        trusted = json.loads((args.out / META_FILE).read_text())["trusted_types"]
        print(f"types beyond skops' defaults, recorded as trusted: {', '.join(trusted) or 'none'}")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    import json  # noqa: PLC0415

    from scorer.bundle import load_bundle  # noqa: PLC0415
    from scorer.schema import prediction_schema  # noqa: PLC0415

    bundle = load_bundle(args.bundle)
    if args.kind == "input":
        schema = bundle.schema.reader_schema(args.id_field)
    else:
        schema = prediction_schema(bundle.schema, bundle.schema.label_type)
    print(json.dumps(schema, indent=2))
    return 0


def cmd_registry(args: argparse.Namespace) -> int:
    from scorer.devregistry import read_users_file, serve  # noqa: PLC0415

    _setup_logging()
    users = read_users_file(args.users_file) if args.users_file else None
    serve(args.host, args.port, args.state_dir, users=users, tls_cert=args.tls_cert, tls_key=args.tls_key)
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    from scorer import devstack  # noqa: PLC0415

    state_dir = args.state_dir or devstack.default_state_dir()
    if args.action == "up":
        stack = devstack.up(state_dir, args.broker_port, args.registry_port)
        print(f"broker    {stack.bootstrap_servers}  (pid {stack.broker_pid})")
        print(f"registry  {stack.registry_url}  (pid {stack.registry_pid})")
        print(f"state     {state_dir}   stop with: scorer dev down --state-dir {state_dir}")
        print(
            f"export SCORER_BOOTSTRAP_SERVERS={stack.bootstrap_servers} SCORER_SCHEMA_REGISTRY_URL={stack.registry_url}"
        )
    elif args.action == "down":
        print("stopped" if devstack.stop(state_dir) else f"nothing running in {state_dir}")
    else:
        stack = devstack.status(state_dir)
        if stack is None:
            print(f"not running ({state_dir})")
            return 1
        print(
            f"running: broker {stack.bootstrap_servers} (pid {stack.broker_pid}), registry {stack.registry_url} (pid {stack.registry_pid})"
        )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from scorer.demo import run_demo  # noqa: PLC0415

    _setup_logging("WARNING")
    return run_demo(records=args.records, rate=args.rate, keep_state=args.state_dir)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scorer", description="Kafka-native scoring of scikit-learn models.")
    parser.add_argument("--version", action="version", version=f"scorer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run",
        help="score a Kafka topic of Avro features",
        description=_description(
            "Score a Kafka topic of Avro feature records with a model bundle; write predictions and dead letters."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_settings_arguments(run, RunSettings)
    run.set_defaults(handler=cmd_run)

    evaluate = sub.add_parser(
        "evaluate",
        help="the evaluation sidecar: rolling metrics once labels arrive",
        description=_description(
            "Join predictions with ground-truth labels by id and export rolling evaluation metrics to Prometheus."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_settings_arguments(evaluate, EvaluateSettings)
    evaluate.set_defaults(handler=cmd_evaluate)

    serve = sub.add_parser(
        "serve",
        help="score JSON records over HTTP with the same code (Azure 'publish as a web service')",
        description=ServeSettings.__doc__,
    )
    add_settings_arguments(serve, ServeSettings)
    serve.set_defaults(handler=cmd_serve)

    labels = sub.add_parser(
        "labels",
        help="publish ground-truth labels from a CSV or Parquet file",
        description="Publish ground-truth labels from a CSV or Parquet file to the labels topic.\n\n"
        "The topic and connection settings are also SCORER_* environment variables or config-file keys\n"
        "(named in their help; see `scorer run --help` for the rules). --id-column, --label-column,\n"
        "--event-time-column, --label-type and --rate describe the file, and are flags only.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    labels.add_argument("file", type=Path, metavar="FILE")
    labels.add_argument("--id-column", default="id")
    labels.add_argument("--label-column", default="label")
    labels.add_argument("--event-time-column", help="event times (default: now)")
    labels.add_argument(
        "--label-type", choices=["string", "long", "double", "boolean"], help="default: from the column"
    )
    labels.add_argument("--rate", type=float, help="labels per second (default: as fast as possible)")
    add_settings_arguments(labels, LabelsSettings)
    labels.set_defaults(handler=cmd_labels)

    sample = sub.add_parser(
        "sample", help="print the latest records of a topic (predictions, labels, dead letters), or save them"
    )
    sample.add_argument("--topic", required=True)
    sample.add_argument("--count", type=int, default=10, help="records per partition (default 10)")
    sample.add_argument("--out", type=Path, help="write them to a .csv or .parquet file instead")
    add_settings_arguments(sample, KafkaSettings)
    sample.set_defaults(handler=cmd_sample)

    bundle = sub.add_parser("bundle", help="make a model bundle from a joblib model and its training data")
    bundle.add_argument("model", type=Path, metavar="MODEL.joblib", help="a fitted scikit-learn estimator or Pipeline")
    bundle.add_argument("--training-data", type=Path, required=True, help="CSV or Parquet the model was trained on")
    bundle.add_argument("--label", required=True, help="label column in the training data")
    bundle.add_argument("--name", required=True, help="model name, carried by every prediction")
    bundle.add_argument("--version", required=True, help="model version, carried by every prediction")
    bundle.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    bundle.add_argument("--task", choices=["binary", "multiclass", "regression"], help="override the inferred task")
    bundle.add_argument("--positive-class", help="binary: the positive class (default: the last of classes_)")
    bundle.add_argument(
        "--format",
        choices=["joblib", "skops"],
        default="joblib",
        help="model file format: joblib (a pickle, default) or skops (loads only types the bundle or operator trusts)",
    )
    bundle.set_defaults(handler=cmd_bundle)

    schema = sub.add_parser("schema", help="print a bundle's input (for producers) or prediction Avro schema")
    schema.add_argument("bundle", type=Path)
    schema.add_argument("--kind", choices=["input", "prediction"], default="input")
    schema.add_argument("--id-field", default="id")
    schema.set_defaults(handler=cmd_schema)

    registry = sub.add_parser("registry", help="the dev schema registry (development and tests only)")
    registry.add_argument("action", choices=["serve"])
    registry.add_argument("--host", default="127.0.0.1")
    registry.add_argument("--port", type=int, default=8081)
    registry.add_argument("--state-dir", type=Path, default=Path(".scorer/registry"))
    registry.add_argument("--users-file", type=Path, help="user:password lines: require HTTP basic auth")
    registry.add_argument("--tls-cert", type=Path, help="serve HTTPS with this certificate (PEM)")
    registry.add_argument("--tls-key", type=Path, help="the certificate's key, if not in the certificate file")
    registry.set_defaults(handler=cmd_registry)

    dev = sub.add_parser("dev", help="start/stop the embedded dev broker and registry on loopback")
    dev.add_argument("action", choices=["up", "down", "status"])
    dev.add_argument("--state-dir", type=Path, help="where PIDs and logs go [env SCORER_STATE_DIR; default .scorer]")
    dev.add_argument("--broker-port", type=int, default=9092, help="preferred port (a free one if taken)")
    dev.add_argument("--registry-port", type=int, default=8081, help="preferred port (a free one if taken)")
    dev.set_defaults(handler=cmd_dev)

    demo = sub.add_parser("demo", help="dev stack + demo model + live stream + scored sample, then stop")
    demo.add_argument("--records", type=int, default=3000)
    demo.add_argument("--rate", type=float, default=1000.0, help="input records per second")
    demo.add_argument("--state-dir", type=Path, help="keep the demo's files here (default: a temporary folder)")
    demo.set_defaults(handler=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except ConfigError as exc:
        print(f"scorer: error: {exc}", file=sys.stderr)
        return 2
    except (SchemaError, BundleError) as exc:
        print(f"scorer: error: {exc}", file=sys.stderr)
        return 3
    except ScorerError as exc:
        print(f"scorer: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
