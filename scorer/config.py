"""Settings: read once from flags, ``SCORER_*`` environment variables and a TOML file, validated at start-up.

Precedence: command-line flag, then environment variable, then config file, then default. Each setting is
a dataclass field whose metadata gives its help text; the flag (``--max-batch-size``), the environment
variable (``SCORER_MAX_BATCH_SIZE``) and the file key (``max_batch_size``) are derived from the field name,
so the three spellings cannot drift apart. Errors name the setting the way the user wrote it.

librdkafka settings pass through unchanged (``--kafka-config security.protocol=SASL_SSL``,
``SCORER_KAFKA_SASL_USERNAME``, a ``[kafka]`` table in the file, or a librdkafka-style properties file in
``--kafka-config-file``). Secrets are refused on the command line (they would show in process lists) and
are redacted wherever settings are printed.

May import: errors. Third-party: none (tomllib is stdlib).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from scorer.errors import ConfigError

__all__ = [
    "EvaluateSettings",
    "KafkaSettings",
    "LabelsSettings",
    "RunSettings",
    "ServeSettings",
    "env_name",
    "flag_name",
    "load_settings",
    "parse_duration",
    "redact",
]

T = TypeVar("T")
ENV_PREFIX = "SCORER_"
_SECRET_WORDS = (
    "password",
    "passphrase",
    "secret",
    "private.key",
    "sasl.oauthbearer.config",
    "ssl.key.pem",
    "basic.auth",
)
REDACTED = "***"
DEFAULT_MAX_WAIT_MS = 20
DEFAULT_MAX_BATCH_SIZE = 5000
"""Large enough that the per-batch fixed costs (a scikit-learn Pipeline call costs about 4 ms however few
rows it gets; decoding and validation about 3 ms more) fall below 2 µs a record under backlog; a quiet
stream never waits for it, because a batch also closes ``max_wait_ms`` after its first record."""
MAX_PORT = 65535
OTHER_ENVIRONMENT = frozenset({"SCORER_STATE_DIR", "SCORER_CONFIG"})
"""SCORER_* variables read elsewhere (dev stack state, config file path): not errors."""


def setting(help: str, default: Any = dataclasses.MISSING, **extra: Any) -> Any:  # noqa: A002 - argparse's word
    """A dataclass field with the help text that the CLI shows."""
    metadata = {"help": help, **extra}
    if isinstance(default, dict | list):
        value = default
        return field(default_factory=lambda: type(value)(value), metadata=metadata)
    return field(default=default, metadata=metadata)


def _without_userinfo(url: str) -> str:
    """``https://user:pw@host`` as ``https://***@host``: credentials in a URL are secrets too."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        return f"{scheme}://{REDACTED}@{rest.split('@', 1)[1]}"
    return url


def is_secret(key: str) -> bool:
    lowered = key.lower()
    return any(word in lowered for word in _SECRET_WORDS)


def redact(config: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``config`` whose secret values are replaced by ``***``, for logs and errors."""
    return {key: (REDACTED if is_secret(key) and value else value) for key, value in config.items()}


@dataclass(frozen=True)
class KafkaSettings:
    """Connection settings shared by every service."""

    bootstrap_servers: str = setting("Kafka bootstrap servers, host:port[,host:port].")
    schema_registry_url: str = setting("Schema registry URL (Confluent REST API), e.g. http://localhost:8081.")
    schema_registry_basic_auth: str = setting(
        "Registry credentials user:password. Secret: environment or config file only.", default="", secret=True
    )
    schema_registry_ca: str = setting("CA bundle to verify the registry's TLS certificate.", default="")
    kafka_config: dict[str, str] = setting(
        "Extra librdkafka client settings KEY=VALUE (repeatable), e.g. security.protocol=SASL_SSL. "
        "Secrets (sasl.password, ssl.key.password) only through SCORER_KAFKA_<KEY> or --kafka-config-file.",
        default={},
    )
    kafka_config_file: str = setting(
        "A librdkafka-style properties file (key=value lines) merged into kafka_config.", default=""
    )
    metrics_port: int = setting("Port of the Prometheus /metrics endpoint (0 turns it off).", default=9400, minimum=0)
    metrics_host: str = setting("Address the metrics endpoint binds to.", default="0.0.0.0")  # noqa: S104
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = setting("Log level.", default="INFO")

    def __repr__(self) -> str:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        values["schema_registry_basic_auth"] = REDACTED if self.schema_registry_basic_auth else ""
        values["schema_registry_url"] = _without_userinfo(self.schema_registry_url)
        values["kafka_config"] = redact(self.kafka_config)
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in values.items())})"

    __str__ = __repr__

    def __post_init__(self) -> None:
        _check_port(self, "metrics_port")

    def client_config(self) -> dict[str, str]:
        """librdkafka settings common to the consumer and producer (before role-specific defaults)."""
        return {"bootstrap.servers": self.bootstrap_servers, **self.kafka_config}

    def registry_config(self) -> dict[str, str]:
        """Configuration for confluent-kafka's ``SchemaRegistryClient``."""
        config = {"url": self.schema_registry_url}
        if self.schema_registry_basic_auth:
            config["basic.auth.user.info"] = self.schema_registry_basic_auth
        if self.schema_registry_ca:
            config["ssl.ca.location"] = self.schema_registry_ca
        return config


@dataclass(frozen=True, repr=False)
class RunSettings(KafkaSettings):
    """Settings of ``scorer run``."""

    input_topic: str = setting("Topic of Avro feature records (Confluent framing).", default="")
    output_topic: str = setting("Topic for prediction records.", default="")
    dead_letter_topic: str = setting("Topic for rejected records (default: <input-topic>.dlq).", default="")
    group_id: str = setting("Consumer group; replicas with the same group share the partitions.", default="scorer")
    model: str = setting("Model bundle directory (made by `scorer bundle`).", default="")
    model_sha256: str = setting("Refuse to start unless the bundle's model file has this SHA-256.", default="")
    model_trusted_types: str = setting(
        "skops bundles: extra types (comma-separated) the operator trusts beyond those the bundle records.", default=""
    )
    id_field: str = setting("Input field copied into each prediction's id.", default="id")
    max_batch_size: int = setting("Most records scored in one model call.", default=DEFAULT_MAX_BATCH_SIZE, minimum=1)
    max_wait_ms: int = setting(
        "Longest wait for a batch to fill after its first record.", default=DEFAULT_MAX_WAIT_MS, minimum=0
    )
    max_record_bytes: int = setting(
        "Feature records larger than this are dead-lettered (record_too_large) without being decoded.",
        default=1_000_000,
        minimum=1,
    )
    include_features: bool = setting("Append the input features to each prediction record.", default=False)
    model_threads: int = setting(
        "Threads the model may use on one batch (OpenMP and BLAS pools, set through threadpoolctl); 0 keeps the "
        "libraries' default of one per core. 1 by default: the main thread decodes and produces meanwhile, and "
        "replicas, not threads, are how scorer scales.",
        default=1,
        minimum=0,
    )
    unknown_categories: Literal["reject", "score"] = setting(
        "A string feature value never seen in training: dead-letter it (reject) or pass it to the model (score).",
        default="reject",
    )
    drain_timeout_s: float = setting("On SIGTERM, longest time to finish, deliver and commit.", default=20.0, minimum=0)
    create_topics: bool = setting("Create missing output and dead-letter topics at start-up.", default=False)
    topic_partitions: int = setting("Partitions of topics created by --create-topics.", default=3, minimum=1)
    processing_guarantee: Literal["at-least-once", "exactly-once"] = setting(
        "at-least-once: commit input offsets after outputs are acknowledged (duplicates possible after a crash). "
        "exactly-once: outputs and offsets in one Kafka transaction per batch (needs a real Kafka cluster to hold).",
        default="at-least-once",
    )
    transactional_id: str = setting(
        "exactly-once: the producer's transactional.id (default: scorer-<group-id>-<hostname>).", default=""
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("bootstrap_servers", "schema_registry_url", "input_topic", "output_topic", "model"):
            if not getattr(self, name):
                raise ConfigError(f"{flag_name(name)} / {env_name(name)}", "is required")
        if not self.dead_letter_topic:
            object.__setattr__(self, "dead_letter_topic", f"{self.input_topic}.dlq")
        if len({self.input_topic, self.output_topic, self.dead_letter_topic}) != 3:
            raise ConfigError("--output-topic", "input, output and dead-letter topics must be three different topics")


@dataclass(frozen=True, repr=False)
class EvaluateSettings(KafkaSettings):
    """Settings of ``scorer evaluate`` (the evaluation sidecar)."""

    predictions_topic: str = setting("Topic of prediction records (the scorer's output topic).", default="")
    labels_topic: str = setting("Topic of ground-truth label records (schemas/label.avsc), keyed by id.", default="")
    group_id: str = setting("Consumer group of the sidecars (one per scorer replica).", default="scorer-evaluate")
    metrics_port: int = setting("Port of the Prometheus /metrics endpoint (0 turns it off).", default=9401, minimum=0)
    count_window: int = setting("Rows in the count window (the last N labelled rows).", default=1000, minimum=1)
    time_windows: str = setting("Event-time windows, comma-separated durations (s, m, h, d).", default="5m,1h")
    label_ttl_s: float = setting(
        "How long an unmatched prediction or label waits for its partner.", default=21600, minimum=1
    )
    max_pending: int = setting(
        "Most unmatched predictions (and, separately, labels) kept.", default=1_000_000, minimum=1
    )
    max_remembered_ids: int = setting(
        "Most joined ids remembered to recognise a redelivered prediction or label; past that the oldest is "
        "forgotten, and if both its prediction and its label are redelivered they are evaluated again.",
        default=100_000,
        minimum=1,
    )
    threshold: float = setting(
        "Binary: predicted positive when P(positive class) >= threshold.", default=0.5, minimum=0
    )
    positive_class: str = setting("Binary: the positive class (default: the last class of the model).", default="")
    rebuild_span_s: float = setting(
        "On start, re-read this much of both topics to rebuild windows and pending joins "
        "(0: label TTL + longest time window).",
        default=0,
        minimum=0,
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("bootstrap_servers", "schema_registry_url", "predictions_topic", "labels_topic"):
            if not getattr(self, name):
                raise ConfigError(f"{flag_name(name)} / {env_name(name)}", "is required")
        spans = self.time_window_seconds  # validates the durations
        if not self.rebuild_span_s:
            object.__setattr__(self, "rebuild_span_s", self.label_ttl_s + max(spans, default=0))

    @property
    def time_window_seconds(self) -> list[int]:
        return [parse_duration(part, "--time-windows") for part in self.time_windows.split(",") if part.strip()]


@dataclass(frozen=True, repr=False)
class LabelsSettings(KafkaSettings):
    """Settings of ``scorer labels``: where ground-truth labels are published (``scorer evaluate`` reads them)."""

    labels_topic: str = setting("Topic the labels are published to (schemas/label.avsc), keyed by id.", default="")

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("bootstrap_servers", "schema_registry_url", "labels_topic"):
            if not getattr(self, name):
                raise ConfigError(f"{flag_name(name)} / {env_name(name)}", "is required")


def _check_port(settings: Any, name: str) -> None:
    """0-65535, checked when settings are built: otherwise bind() fails later with a bare OverflowError."""
    port = getattr(settings, name)
    if not 0 <= port <= MAX_PORT:
        raise ConfigError(f"{flag_name(name)} / {env_name(name)}", f"has value {port}; ports are 0-{MAX_PORT}")


def parse_duration(text: str, setting_name: str) -> int:
    """``"90s"``, ``"5m"``, ``"1h"``, ``"1d"`` or plain seconds, as whole seconds.

    >>> parse_duration("5m", "--time-windows"), parse_duration("3600", "--time-windows")
    (300, 3600)
    """
    text = text.strip().lower()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], units[text[-1]]) if text[-1:] in units else (text, 1)
    if not number.isdigit() or int(number) == 0:
        raise ConfigError(setting_name, f"has value {text!r}; expected durations like 90s, 5m, 1h, 1d")
    return int(number) * unit


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def load_settings(
    cls: type[T],
    flags: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
    config_file: Path | None = None,
) -> T:
    """Build ``cls`` from flags (already parsed, ``None`` when not given), environment and file.

    Raises:
        ConfigError: naming the flag, environment variable or file key that is wrong.
    """
    environ = os.environ if environ is None else environ
    file_values = _read_file(config_file) if config_file else {}
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(file_values) - set(fields) - {"kafka"})
    if unknown:
        raise ConfigError(f"{config_file}: {unknown[0]}", f"unknown setting; known: {', '.join(sorted(fields))}")
    _reject_unknown_environment(fields, environ)
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for name, spec in fields.items():
        if name == "kafka_config":
            values[name] = _kafka_config(flags.get(name), environ, file_values.get("kafka", {}), flags, file_values)
            continue
        raw, where = _pick(name, flags, environ, file_values, config_file)
        if raw is None:
            continue
        if spec.metadata.get("secret") and where.startswith("--"):
            raise ConfigError(where, f"is a secret: set {env_name(name)} or put it in the config file instead")
        values[name] = _convert(raw, hints[name], where, spec.metadata)
    for name, spec in fields.items():  # without this, a field with no default fails as a TypeError
        if name not in values and spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{flag_name(name)} / {env_name(name)}", "is required")
    return cls(**values)


def _reject_unknown_environment(fields: Mapping[str, Any], environ: Mapping[str, str]) -> None:
    """A misspelt ``SCORER_*`` variable would otherwise be ignored silently."""
    if env_name("kafka_config") in environ:
        raise ConfigError(
            env_name("kafka_config"), "set one SCORER_KAFKA_<KEY> variable per librdkafka setting instead"
        )
    known = {env_name(name) for name in fields} | OTHER_ENVIRONMENT
    for key in environ:
        if (
            key.startswith(ENV_PREFIX)
            and key not in known
            and not key.startswith((ENV_PREFIX + "KAFKA_", ENV_PREFIX + "TEST_"))
        ):
            raise ConfigError(key, "is not a setting of this command; see --help for the SCORER_* variables")


def _pick(
    name: str, flags: Mapping[str, Any], environ: Mapping[str, str], file_values: Mapping[str, Any], path: Path | None
) -> tuple[Any, str]:
    if flags.get(name) is not None:
        return flags[name], flag_name(name)
    if env_name(name) in environ:
        return environ[env_name(name)], env_name(name)
    if name in file_values:
        return file_values[name], f"{path}: {name}"
    return None, ""


def _convert(raw: Any, hint: Any, where: str, metadata: Mapping[str, Any]) -> Any:
    origin = typing.get_origin(hint)
    if origin is Literal:
        choices = typing.get_args(hint)
        if raw not in choices:
            raise ConfigError(where, f"has value {raw!r}; choose one of {', '.join(map(str, choices))}")
        return raw
    if hint is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in {"1", "true", "yes", "on"}:
            return True
        if text in {"0", "false", "no", "off", ""}:
            return False
        raise ConfigError(where, f"has value {raw!r}. Not a valid boolean (true/false)")
    if hint in (int, float):
        try:
            # TOML is typed: int(10.7) and int(True) would silently change what the user wrote
            if isinstance(raw, bool) or (hint is int and isinstance(raw, float)):
                raise ValueError(raw)
            value = hint(raw)
            if value != value:  # NaN passes every minimum check
                raise ValueError(raw)
        except (TypeError, ValueError):
            raise ConfigError(where, f"has value {raw!r}. Not a valid {hint.__name__}") from None
        minimum = metadata.get("minimum")
        if minimum is not None and value < minimum:
            raise ConfigError(where, f"has value {raw!r}; it must be at least {minimum}")
        return value
    if hint is str or isinstance(hint, types.UnionType):
        return str(raw)
    return raw


def _kafka_config(
    flag_items: list[str] | None,
    environ: Mapping[str, str],
    file_table: Mapping[str, Any],
    flags: Mapping[str, Any],
    file_values: Mapping[str, Any],
) -> dict[str, str]:
    """Merge librdkafka pass-through settings: properties file < config file < environment < flags."""
    merged: dict[str, str] = {}
    properties = (
        flags.get("kafka_config_file")
        or environ.get(env_name("kafka_config_file"))
        or file_values.get("kafka_config_file")
    )
    if properties:
        merged.update(_read_properties(Path(properties)))
    merged.update(_dotted(file_table))
    prefix = ENV_PREFIX + "KAFKA_"
    for key, value in environ.items():
        if key.startswith(prefix) and key not in (env_name("kafka_config_file"), env_name("kafka_config")):
            merged[key[len(prefix) :].lower().replace("_", ".")] = value
    for item in flag_items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError("--kafka-config", f"has value {item!r}; expected KEY=VALUE")
        if is_secret(key):
            raise ConfigError(
                "--kafka-config",
                f"{key} is a secret: set {prefix}{key.upper().replace('.', '_')} or use --kafka-config-file",
            )
        merged[key.strip()] = value.strip()
    return merged


def _dotted(table: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """TOML reads an unquoted ``sasl.password = "x"`` as nested tables: flatten them back to dotted keys."""
    flat: dict[str, str] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_dotted(value, f"{name}."))
        else:
            flat[name] = str(value).lower() if isinstance(value, bool) else str(value)
    return flat


def _read_properties(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise ConfigError("--kafka-config-file", f"{path} does not exist")
    result = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ConfigError("--kafka-config-file", f"{path}:{number} is not key=value")
        result[key.strip()] = value.strip()
    return result


def _read_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError("--config", f"{path} does not exist")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("--config", f"{path} is not valid TOML: {exc}") from exc


@dataclass(frozen=True)
class ServeSettings:
    """Settings of ``scorer serve``: score JSON rows over HTTP with the same code as ``scorer run``.

    Endpoints: POST /score (JSON records in, prediction records and rejections out), GET /schema (the
    model's input schema), GET /healthz, GET /metrics. It binds to loopback unless --host says otherwise,
    and has no authentication or TLS of its own: put a proxy that has them in front of it.
    """

    model: str = setting("Model bundle directory (made by `scorer bundle`). Required.", default="")
    model_sha256: str = setting("Refuse to start unless the bundle's model file has this SHA-256.", default="")
    model_trusted_types: str = setting(
        "skops bundles: extra types (comma-separated) the operator trusts beyond those the bundle records.", default=""
    )
    id_field: str = setting("Input field copied into each prediction's id.", default="id")
    unknown_categories: Literal["reject", "score"] = setting(
        "A string feature value never seen in training: reject the row (reject) or pass it to the model (score).",
        default="reject",
    )
    model_threads: int = setting(
        "Threads the model may use on one request (OpenMP and BLAS pools, set through threadpoolctl); 0 keeps the "
        "libraries' default of one per core. 1 by default: requests are scored concurrently, each on its own thread.",
        default=1,
        minimum=0,
    )
    host: str = setting(
        "Address to listen on. Loopback by default; any other address makes the service reachable from other "
        "machines (logged as a warning).",
        default="127.0.0.1",
    )
    port: int = setting("Port to listen on (0: a free port, logged at start-up).", default=8000, minimum=0)
    max_request_bytes: int = setting(
        "Largest request body accepted; larger requests get 413 before their body is read.",
        default=1_048_576,
        minimum=1,
    )
    max_rows: int = setting("Most records in one request; more get 413.", default=1000, minimum=1)
    request_timeout_s: float = setting(
        "Longest time a client may take to send its whole request (headers and body); then the connection "
        "is closed. Also bounds sending the response.",
        default=10.0,
        minimum=0.1,
    )
    max_concurrent_requests: int = setting(
        "Most connections served at once; further connections wait in the listen queue.", default=16, minimum=1
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = setting(
        "Log level (DEBUG logs every request).", default="INFO"
    )

    def __post_init__(self) -> None:
        if not self.model:
            raise ConfigError(f"{flag_name('model')} / {env_name('model')}", "is required")
        _check_port(self, "port")
