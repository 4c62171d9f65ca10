"""Secured connections for real: TLS and mTLS to the broker, SASL/SCRAM, basic auth and TLS to the registry.

What the dev broker (Tansu 0.6.0) can do decides how each part is tested (docs/security.md has the details):

- TLS: Tansu's ``--cert`` and ``--key`` cannot be given together, so its listener always speaks plaintext.
  ``TlsFront`` below terminates TLS on a loopback port and forwards the bytes to Tansu, which advertises
  the front's address. librdkafka does a real handshake (CA and host name checked, client certificate
  required), so every TLS setting scorer passes through is exercised; only the TLS server is not Tansu.
- SASL: ``--authentication`` makes Tansu require SCRAM-SHA-256/512, but it stores no users
  (AlterUserScramCredentials answers success and keeps nothing), so no login can succeed. The tests run
  the real SCRAM exchange against it and check the failure: a clear error, and no password anywhere.
- The registry: the dev registry with basic auth and TLS (``make_server(users=..., tls_cert=...)``).

Secrets are random per run, so finding one in a log, an error or a command line is never a coincidence.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, TopicPartition
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from scorer import cli, devregistry, devstack
from scorer.config import RunSettings, load_settings
from scorer.demo import feature_writer_schema
from scorer.errors import ConfigError, RegistryUnavailable
from scorer.kafka import create_admin, create_consumer, create_producer, ensure_topics
from scorer.registry import Registry
from tests.fixtures.process import ScorerProcess
from tests.integration.helpers import produce_rows

pytestmark = pytest.mark.integration

KEY_PASSWORD = f"key-{uuid.uuid4().hex}"
REGISTRY_PASSWORD = f"reg-{uuid.uuid4().hex}"
SASL_PASSWORD = f"sasl-{uuid.uuid4().hex}"
SECRETS = (KEY_PASSWORD, REGISTRY_PASSWORD, SASL_PASSWORD)
REGISTRY_USER = "scorer"
QUIET = {"log_level": "2"}  # librdkafka: only critical lines; failures are read from error_cb


# ------------------------------------------------------------------------------------------------ fixtures


@dataclass(frozen=True)
class Pki:
    """A test CA, a server certificate for localhost / 127.0.0.1, and a client certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path  # encrypted with KEY_PASSWORD

    def server_context(self, require_client_cert: bool) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.server_cert, self.server_key)
        if require_client_cert:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(self.ca)
        return context


def _openssl(*args: str | Path, env: dict[str, str] | None = None) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, env=env, timeout=30)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Made with the openssl command line (EC P-256 keys: fast), as an operator would make test certificates."""
    d = tmp_path_factory.mktemp("pki")
    ca_key, ca = d / "ca.key", d / "ca.pem"
    new_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    _openssl("req", "-x509", *new_key, "-subj", "/CN=scorer test CA", "-days", "2", "-keyout", ca_key, "-out", ca)
    for name, extensions in (
        ("server", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ):
        key, csr, cert, ext = (d / f"{name}{suffix}" for suffix in (".plain.key", ".csr", ".pem", ".ext"))
        ext.write_text(extensions)
        _openssl("req", *new_key, "-subj", f"/CN={name}", "-keyout", key, "-out", csr)
        signing = ["-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-days", "2", "-extfile", ext]
        _openssl("x509", "-req", "-in", csr, *signing, "-out", cert)
    # the client key is encrypted; openssl reads the passphrase from its environment, not from argv
    encrypt = ["-aes256", "-passout", "env:TEST_KEY_PASSPHRASE"]
    env = {**os.environ, "TEST_KEY_PASSPHRASE": KEY_PASSWORD}
    _openssl("pkey", "-in", d / "client.plain.key", *encrypt, "-out", d / "client.key", env=env)
    (d / "client.plain.key").unlink()
    return Pki(ca, d / "server.pem", d / "server.plain.key", d / "client.pem", d / "client.key")


class TlsFront:
    """Terminates TLS on a free loopback port and forwards the plaintext to ``target_port``.

    asyncio in a thread of its own. Failed handshakes are expected (tests provoke them), so the loop's
    exception handler keeps them quiet; on stop every connection is aborted, so nothing is left unclosed.
    """

    def __init__(self, context: ssl.SSLContext, target_port: int) -> None:
        self._context, self._target = context, target_port
        self._loop = asyncio.new_event_loop()
        self._loop.set_exception_handler(lambda loop, details: None)
        self._writers: set[asyncio.StreamWriter] = set()
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(started,), name="tls-front", daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("the TLS front did not start")

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._connection, "127.0.0.1", 0, ssl=self._context)
        )
        self.port = int(server.sockets[0].getsockname()[1])
        started.set()
        self._loop.run_forever()
        server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        pending = asyncio.all_tasks(self._loop)
        for task in pending:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self._loop.run_until_complete(server.wait_closed())
        self._loop.close()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self._target)
        except OSError:
            writer.transport.abort()
            self._writers.discard(writer)
            return
        self._writers.add(upstream_writer)
        try:
            await asyncio.gather(_pump(reader, upstream_writer), _pump(upstream_reader, writer))
        finally:
            for w in (writer, upstream_writer):
                w.transport.abort()
                self._writers.discard(w)

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (OSError, ssl.SSLError):
        pass
    finally:
        writer.transport.abort()  # either side gone: end the other direction too


@dataclass(frozen=True)
class SecuredBroker:
    bootstrap: str  # the TLS front's address, which the broker advertises
    log: Path


def _secured_broker(state: Path, context: ssl.SSLContext, broker_args: tuple[str, ...]) -> Iterator[SecuredBroker]:
    """A dev stack whose broker sits behind a TLS front (started first, so the broker can advertise it)."""
    broker_port = devstack.free_port()
    front = TlsFront(context, broker_port)
    try:
        stack = devstack.up(
            state,
            broker_port=broker_port,
            registry_port=0,
            advertised=f"localhost:{front.port}",
            broker_args=broker_args,
        )
        try:
            yield SecuredBroker(stack.bootstrap_servers, state / "broker.log")
        finally:
            devstack.stop(state)
    finally:
        front.stop()


@pytest.fixture(scope="module")
def tls_broker(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredBroker]:
    """SSL with a client certificate required (mTLS)."""
    yield from _secured_broker(tmp_path_factory.mktemp("tls-broker"), pki.server_context(True), ())


@pytest.fixture(scope="module")
def sasl_broker(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredBroker]:
    """SASL_SSL: Tansu with --authentication behind a TLS front that checks no client certificate."""
    state = tmp_path_factory.mktemp("sasl-broker")
    yield from _secured_broker(state, pki.server_context(False), ("--authentication",))


@pytest.fixture(scope="module")
def secure_registry(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The dev registry over HTTPS with basic auth, in a thread of this process; yields its URL."""
    state = tmp_path_factory.mktemp("secure-registry")
    users_file = state / "users"  # the file `scorer registry serve` would read: passwords stay out of argv
    users_file.write_text(f"# user:password\n{REGISTRY_USER}:{REGISTRY_PASSWORD}\n")
    users = devregistry.read_users_file(users_file)
    assert users == {REGISTRY_USER: REGISTRY_PASSWORD}
    server = devregistry.make_server(
        "127.0.0.1", 0, state, users=users, tls_cert=pki.server_cert, tls_key=pki.server_key
    )
    thread = threading.Thread(target=server.serve_forever, name="secure-registry", daemon=True)
    thread.start()
    try:
        yield f"https://localhost:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


# ------------------------------------------------------------------------------------------------- helpers


def tls_env(broker: SecuredBroker, pki: Pki, registry_url: str) -> dict[str, str]:
    """The environment an operator would give scorer for mTLS to Kafka and basic auth + TLS to the registry."""
    return {
        "SCORER_BOOTSTRAP_SERVERS": broker.bootstrap,
        "SCORER_SCHEMA_REGISTRY_URL": registry_url,
        "SCORER_SCHEMA_REGISTRY_BASIC_AUTH": f"{REGISTRY_USER}:{REGISTRY_PASSWORD}",
        "SCORER_SCHEMA_REGISTRY_CA": str(pki.ca),
        "SCORER_KAFKA_SECURITY_PROTOCOL": "SSL",
        "SCORER_KAFKA_SSL_CA_LOCATION": str(pki.ca),
        "SCORER_KAFKA_SSL_CERTIFICATE_LOCATION": str(pki.client_cert),
        "SCORER_KAFKA_SSL_KEY_LOCATION": str(pki.client_key),
        "SCORER_KAFKA_SSL_KEY_PASSWORD": KEY_PASSWORD,
    }


def sasl_env(broker: SecuredBroker, pki: Pki, registry_url: str, mechanism: str) -> dict[str, str]:
    return {
        "SCORER_BOOTSTRAP_SERVERS": broker.bootstrap,
        "SCORER_SCHEMA_REGISTRY_URL": registry_url,
        "SCORER_SCHEMA_REGISTRY_BASIC_AUTH": f"{REGISTRY_USER}:{REGISTRY_PASSWORD}",
        "SCORER_SCHEMA_REGISTRY_CA": str(pki.ca),
        "SCORER_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "SCORER_KAFKA_SSL_CA_LOCATION": str(pki.ca),
        "SCORER_KAFKA_SASL_MECHANISM": mechanism,
        "SCORER_KAFKA_SASL_USERNAME": "scorer",
        "SCORER_KAFKA_SASL_PASSWORD": SASL_PASSWORD,
    }


def settings_from(env: dict[str, str]) -> RunSettings:
    """Settings exactly as ``scorer run`` builds them from its environment."""
    required = {"SCORER_INPUT_TOPIC": "features", "SCORER_OUTPUT_TOPIC": "predictions", "SCORER_MODEL": "unused"}
    return load_settings(RunSettings, {}, environ={**required, **env})


def without(env: dict[str, str], *names: str) -> dict[str, str]:
    return {k: v for k, v in env.items() if k not in names}


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def client_errors(settings: RunSettings, done: Callable[[str], bool], timeout_s: float = 10) -> list[str]:
    """What a producer built from ``settings`` reports, until ``done`` accepts a line or the timeout.

    Both channels an operator sees: ``error_cb`` (scorer logs these as ``kafka client: ...``) and
    librdkafka's own log lines up to level 6 (what scorer's stderr shows).
    """
    lines = _Lines()
    logger = logging.getLogger(f"rdkafka.{uuid.uuid4().hex[:6]}")
    logger.addHandler(lines)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    errors: list[KafkaError] = []
    producer = create_producer(settings, error_cb=errors.append, logger=logger, log_level=6)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            producer.poll(0.1)
            seen = [f"{e.name()}: {e.str()}" for e in errors] + lines.lines
            if any(done(line) for line in seen):
                return seen
        return seen
    finally:
        logger.removeHandler(lines)


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, "a secret leaked"


def read_all(settings: RunSettings, topic: str, expected: int, partitions: int, timeout_s: float = 60) -> list:
    consumer = create_consumer(settings, f"reader-{uuid.uuid4().hex[:6]}", overrides=QUIET)
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    messages: list = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(messages) < expected and time.monotonic() < deadline:
            messages += [m for m in consumer.consume(num_messages=1000, timeout=0.5) if m.error() is None]
    finally:
        consumer.close()
    return messages


def new_topic(settings: RunSettings, prefix: str, partitions: int = 1) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
    ensure_topics(create_admin(settings), [name], create=True, partitions=partitions, setting="--input-topic")
    return name


# --------------------------------------------------------------------------------------- Kafka: TLS, mTLS


def test_mtls_round_trip_with_the_settings_scorer_passes(tls_broker, pki, secure_registry):
    settings = settings_from(tls_env(tls_broker, pki, secure_registry))
    assert settings.kafka_config["ssl.key.password"] == KEY_PASSWORD
    assert_no_secret(repr(settings))
    topic = new_topic(settings, "mtls")
    sent = [(f"key-{i}".encode(), f"value-{i}".encode()) for i in range(5)]
    errors: list[KafkaError] = []
    producer = create_producer(settings, error_cb=errors.append, **QUIET)
    for key, value in sent:
        producer.produce(topic, value, key)
    assert producer.flush(15) == 0
    received = [(m.key(), m.value()) for m in read_all(settings, topic, len(sent), partitions=1)]
    assert received == sent
    assert not [e for e in errors if e.code() in (KafkaError._SSL, KafkaError._AUTHENTICATION)]  # noqa: SLF001


@pytest.mark.parametrize(
    ("missing", "expected"),
    [
        # error_cb (_SSL), so scorer logs it as "kafka client: ..."; librdkafka even names the setting
        (
            "ssl.ca.location",
            "certificate verify failed: broker certificate could not be verified, verify that "
            "ssl.ca.location is correctly configured",
        ),
        # TLS 1.3: the server refuses the missing certificate after the client's handshake is done, so
        # librdkafka only sees the connection close (log level 6, error_cb says "1/1 brokers are down")
        ("client certificate", "Disconnected: SSL connection closed by peer (after"),
        # security.protocol left at PLAINTEXT against a TLS listener
        ("security.protocol=SSL", "Disconnected: connection closed by peer: receive 0 after POLLIN"),
    ],
)
def test_tls_misconfiguration_fails_with_librdkafkas_words(missing, expected, tls_broker, pki, secure_registry):
    env = tls_env(tls_broker, pki, secure_registry)
    if missing == "ssl.ca.location":
        env = without(env, "SCORER_KAFKA_SSL_CA_LOCATION")
    elif missing == "client certificate":
        env = {k: v for k, v in env.items() if not k.startswith(("SCORER_KAFKA_SSL_CERT", "SCORER_KAFKA_SSL_KEY"))}
    else:
        env = {k: v for k, v in env.items() if not k.startswith("SCORER_KAFKA_")}
    seen = client_errors(settings_from(env), lambda line: expected in line)
    assert any(expected in line for line in seen), seen
    assert_no_secret("\n".join(seen))


def test_a_wrong_key_password_stops_start_up_naming_the_setting(tls_broker, pki, secure_registry):
    env = {**tls_env(tls_broker, pki, secure_registry), "SCORER_KAFKA_SSL_KEY_PASSWORD": SASL_PASSWORD}
    with pytest.raises(ConfigError) as caught:
        create_producer(settings_from(env), **QUIET)
    # librdkafka says only "ssl.key.location failed: ... PEM lib" (its log adds "maybe wrong password")
    assert str(caught.value).startswith("--kafka-config: librdkafka refused the producer settings")
    assert "ssl.key.location failed" in str(caught.value)
    assert_no_secret(str(caught.value))


# ------------------------------------------------------------------------------------------ Kafka: SASL


@pytest.mark.parametrize(
    ("mechanism", "expected"),
    [
        ("SCRAM-SHA-512", "SASL SCRAM authentication failed: broker responded with unknown-user"),
        ("SCRAM-SHA-256", "SASL SCRAM authentication failed: broker responded with unknown-user"),
        ("PLAIN", "SASL PLAIN mechanism handshake failed"),  # Tansu 0.6.0 offers SCRAM only
    ],
)
def test_sasl_login_runs_against_the_broker_and_fails_clearly(mechanism, expected, sasl_broker, pki, secure_registry):
    """Tansu stores no SCRAM users, so the exchange can only fail; it does fail at the broker, by name."""
    settings = settings_from(sasl_env(sasl_broker, pki, secure_registry, mechanism))
    assert settings.kafka_config["sasl.password"] == SASL_PASSWORD
    assert_no_secret(repr(settings))
    seen = client_errors(settings, lambda line: expected in line and line.startswith("_AUTHENTICATION"))
    assert any(expected in line and line.startswith("_AUTHENTICATION") for line in seen), seen
    assert_no_secret("\n".join(seen))


def test_a_client_without_sasl_is_turned_away(sasl_broker, pki, secure_registry):
    env = without(sasl_env(sasl_broker, pki, secure_registry, "SCRAM-SHA-512"), "SCORER_KAFKA_SASL_MECHANISM")
    env["SCORER_KAFKA_SECURITY_PROTOCOL"] = "SSL"
    expected = "Disconnected: SSL connection closed by peer"  # Tansu answers NotAuthenticated by closing
    seen = client_errors(settings_from(env), lambda line: expected in line)
    assert any(expected in line for line in seen), seen


# --------------------------------------------------------------------------- registry: basic auth and TLS


def test_registry_basic_auth_and_tls_reach_the_registry_client(tls_broker, pki, secure_registry):
    env = tls_env(tls_broker, pki, secure_registry)
    config = settings_from(env).registry_config()
    assert config == {
        "url": secure_registry,
        "basic.auth.user.info": f"{REGISTRY_USER}:{REGISTRY_PASSWORD}",
        "ssl.ca.location": str(pki.ca),
    }
    registry = Registry(config)
    subject = f"auth-{uuid.uuid4().hex[:8]}-value"
    schema = {"type": "record", "name": "R", "fields": [{"name": "id", "type": "string"}]}
    try:
        schema_id = registry.register(subject, schema)
        assert registry.latest(subject).schema_id == schema_id
    finally:
        registry.close()


@pytest.mark.parametrize(
    ("change", "error", "expected"),
    [
        ({"SCORER_SCHEMA_REGISTRY_BASIC_AUTH": f"{REGISTRY_USER}:{SASL_PASSWORD}"}, ConfigError, "HTTP 401"),
        ({"SCORER_SCHEMA_REGISTRY_BASIC_AUTH": None}, ConfigError, "HTTP 401"),
        ({"SCORER_SCHEMA_REGISTRY_CA": None}, RegistryUnavailable, "CERTIFICATE_VERIFY_FAILED"),
    ],
    ids=["wrong password", "no credentials", "no CA"],
)
def test_registry_refusals_are_clear_and_keep_the_secret(change, error, expected, tls_broker, pki, secure_registry):
    env = tls_env(tls_broker, pki, secure_registry)
    env = {k: v for k, v in {**env, **change}.items() if v is not None}
    # max.retries 0: the client would otherwise retry a failed TLS handshake with backoff for seconds
    registry = Registry({**settings_from(env).registry_config(), "max.retries": 0}, timeout_s=5)
    try:
        with pytest.raises(error) as caught:
            registry.latest("anything-value")
    finally:
        registry.close()
    assert expected in str(caught.value)
    if error is ConfigError:  # refused credentials are a setting to fix: exit code 2, naming it
        assert caught.value.setting.startswith("--schema-registry-basic-auth")
    assert_no_secret(str(caught.value))


# ----------------------------------------------------------------------------- `scorer run`, a real process


def _scorer_env(settings_env: dict[str, str], source: str, sink: str, model_path: Path) -> dict[str, str]:
    return {
        **settings_env,
        "SCORER_INPUT_TOPIC": source,
        "SCORER_OUTPUT_TOPIC": sink,
        "SCORER_MODEL": str(model_path),
        "SCORER_GROUP_ID": f"scorer-{source}",
        "SCORER_CREATE_TOPICS": "true",
    }


def _command_line(pid: int) -> str:
    """What ``ps`` shows for ``pid``."""
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def test_scorer_run_scores_over_mtls_with_registry_auth_and_shows_no_secret(
    tls_broker, pki, secure_registry, trained, tmp_path
):
    model = trained("binary")
    settings = settings_from(tls_env(tls_broker, pki, secure_registry))
    source, sink = new_topic(settings, "features"), new_topic(settings, "predictions")
    registry = SchemaRegistryClient(settings.registry_config())
    producer = create_producer(settings, **QUIET)
    ids, _ = produce_rows(producer, registry, source, model, n=20)
    # Kafka settings, the key password among them, from a properties file (mode 600), as an operator would
    properties = tmp_path / "kafka.properties"
    properties.write_text("".join(f"{key}={value}\n" for key, value in settings.kafka_config.items()))
    properties.chmod(0o600)
    env = {k: v for k, v in tls_env(tls_broker, pki, secure_registry).items() if not k.startswith("SCORER_KAFKA_")}
    env["SCORER_KAFKA_CONFIG_FILE"] = str(properties)
    scorer = ScorerProcess(_scorer_env(env, source, sink, model.path), tmp_path / "scorer.log")
    try:
        command_lines = [_command_line(scorer.pid)]
        scorer.wait_for_log("assigned", timeout_s=40)
        command_lines.append(_command_line(scorer.pid))
        outputs = read_all(settings, sink, expected=len(ids), partitions=1)
    finally:
        scorer.sigterm()
        code = scorer.wait(60)
        registry.__exit__()
    log = scorer.output()
    assert code == 0, log[-3000:]
    reader = SchemaRegistryClient(settings.registry_config())
    try:
        deserializer, context = AvroDeserializer(reader), SerializationContext(sink, MessageField.VALUE)
        assert sorted(deserializer(m.value(), context)["id"] for m in outputs) == sorted(ids), log[-3000:]
    finally:
        reader.__exit__()
    assert "'ssl.key.password': '***'" in log and "schema_registry_basic_auth='***'" in log
    assert_no_secret(log)
    for command_line in command_lines:
        assert_no_secret(command_line)


def test_scorer_run_with_a_refused_sasl_login_logs_the_reason_but_not_the_password(
    sasl_broker, pki, secure_registry, trained, tmp_path
):
    model = trained("binary")
    source = f"features-{uuid.uuid4().hex[:10]}"
    settings = settings_from(sasl_env(sasl_broker, pki, secure_registry, "SCRAM-SHA-512"))
    registry = SchemaRegistryClient(settings.registry_config())
    try:  # start-up checks the input schema before it talks to Kafka
        registry.register_schema(
            f"{source}-value", Schema(json.dumps(feature_writer_schema(model.bundle.schema)), "AVRO")
        )
    finally:
        registry.__exit__()
    env = _scorer_env(sasl_env(sasl_broker, pki, secure_registry, "SCRAM-SHA-512"), source, f"{source}-out", model.path)
    scorer = ScorerProcess(env, tmp_path / "scorer.log")
    try:
        command_line = _command_line(scorer.pid)
        scorer.wait_for_log("SASL SCRAM authentication failed: broker responded with unknown-user", timeout_s=40)
    finally:
        scorer.sigkill()  # it would retry the login until its start-up timeout; the log is what this test reads
    assert_no_secret(scorer.output())
    assert_no_secret(command_line)


# ------------------------------------------------------------------------ secrets on the command line


def _run_environment(tmp_path: Path) -> dict[str, str]:
    """Every required setting but nothing secret, in a clean environment (no inherited ``SCORER_*``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCORER_")}
    required = {
        "BOOTSTRAP_SERVERS": "localhost:9",
        "SCHEMA_REGISTRY_URL": "https://localhost:9",
        "MODEL": str(tmp_path),
    }
    required |= {"INPUT_TOPIC": "features", "OUTPUT_TOPIC": "predictions"}
    return env | {f"SCORER_{name}": value for name, value in required.items()}


def test_a_sasl_password_on_the_command_line_is_refused_with_exit_2(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "scorer", "run", "--kafka-config", f"sasl.password={SASL_PASSWORD}"],
        env=_run_environment(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (
        "scorer: error: --kafka-config: sasl.password is a secret: set SCORER_KAFKA_SASL_PASSWORD "
        "or use --kafka-config-file"
    )
    assert_no_secret(done.stdout + done.stderr)


@pytest.mark.parametrize(
    ("flag", "expected"),
    [
        (
            ["--kafka-config", f"ssl.key.password={KEY_PASSWORD}"],
            "--kafka-config: ssl.key.password is a secret: set SCORER_KAFKA_SSL_KEY_PASSWORD or use --kafka-config-file",
        ),
        (
            ["--schema-registry-basic-auth", f"{REGISTRY_USER}:{REGISTRY_PASSWORD}"],
            "--schema-registry-basic-auth: is a secret: set SCORER_SCHEMA_REGISTRY_BASIC_AUTH or put it in the config "
            "file instead",
        ),
    ],
    ids=["ssl.key.password", "registry basic auth"],
)
def test_other_secrets_on_the_command_line_are_refused_too(flag, expected, tmp_path, monkeypatch, capsys):
    """In this process (the real-process case is above): the same ``main`` the ``scorer`` command runs."""
    for name in [k for k in os.environ if k.startswith("SCORER_")]:
        monkeypatch.delenv(name)
    for name, value in _run_environment(tmp_path).items():
        if name.startswith("SCORER_"):
            monkeypatch.setenv(name, value)
    assert cli.main(["run", *flag]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == f"scorer: error: {expected}"
    assert_no_secret(captured.out + captured.err)


# ------------------------------------------------------------------------------ a real secured cluster

SECURE_BOOTSTRAP = os.environ.get("SCORER_TEST_SECURE_BOOTSTRAP")
SECURE_PROPERTIES = os.environ.get("SCORER_TEST_SECURE_KAFKA_CONFIG_FILE")
"""A real secured cluster (see docs/security.md): its bootstrap servers, and a librdkafka properties file
with its security settings and secrets (security.protocol, sasl.*, ssl.*). The SCRAM login that the dev
broker cannot complete is proven there."""

if SECURE_BOOTSTRAP and SECURE_PROPERTIES:  # defined only then: a run without a cluster reports no skip

    def test_round_trip_and_a_wrong_password_against_the_real_secured_cluster():
        env = {
            "SCORER_BOOTSTRAP_SERVERS": SECURE_BOOTSTRAP,
            "SCORER_SCHEMA_REGISTRY_URL": "https://unused.invalid",
            "SCORER_KAFKA_CONFIG_FILE": SECURE_PROPERTIES,
        }
        settings = settings_from(env)
        topic = new_topic(settings, "secure-round-trip")
        producer = create_producer(settings, **QUIET)
        sent = [(f"key-{i}".encode(), f"value-{i}".encode()) for i in range(5)]
        for key, value in sent:
            producer.produce(topic, value, key)
        assert producer.flush(30) == 0
        assert [(m.key(), m.value()) for m in read_all(settings, topic, len(sent), partitions=1)] == sent
        if "sasl.password" in settings.kafka_config:  # the environment wins over the properties file
            wrong = settings_from({**env, "SCORER_KAFKA_SASL_PASSWORD": SASL_PASSWORD})
            seen = client_errors(wrong, lambda line: line.startswith("_AUTHENTICATION"), timeout_s=30)
            assert any(line.startswith("_AUTHENTICATION") for line in seen), seen
            assert_no_secret("\n".join(seen))
