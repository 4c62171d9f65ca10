"""Unit tests of scorer.config: precedence, errors that name the setting, kafka pass-through, secrets."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from scorer.config import DEFAULT_MAX_BATCH_SIZE, EvaluateSettings, LabelsSettings, RunSettings, load_settings
from scorer.errors import ConfigError
from scorer.join import LabelJoiner, PredictionFacts
from scorer.sidecar import EvaluationSidecar

REQUIRED = {
    "SCORER_BOOTSTRAP_SERVERS": "broker:9092",
    "SCORER_SCHEMA_REGISTRY_URL": "http://registry:8081",
    "SCORER_INPUT_TOPIC": "features",
    "SCORER_OUTPUT_TOPIC": "predictions",
    "SCORER_MODEL": "/models/churn",
}


def run(
    flags: dict[str, Any] | None = None, env: dict[str, str] | None = None, config: Path | None = None
) -> RunSettings:
    return load_settings(RunSettings, flags or {}, {**REQUIRED, **(env or {})}, config)


def toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "scorer.toml"
    path.write_text(text)
    return path


def error(call: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        call()
    return info.value


# --- precedence ----------------------------------------------------------------------------------------------


def test_precedence_is_flag_then_env_then_file_then_default(tmp_path: Path) -> None:
    config = toml(tmp_path, "max_batch_size = 10\nmax_wait_ms = 11\ngroup_id = 'from-file'\n")
    env = {"SCORER_MAX_BATCH_SIZE": "20", "SCORER_GROUP_ID": "from-env"}
    settings = run({"max_batch_size": "30", "group_id": None}, env, config)
    assert settings.max_batch_size == 30  # flag beats env and file
    assert settings.group_id == "from-env"  # a flag left at None does not count
    assert settings.max_wait_ms == 11  # file beats default
    assert settings.drain_timeout_s == 20.0  # default
    assert run(env=env, config=config).max_batch_size == 20
    assert run(config=config).max_batch_size == 10
    assert run().max_batch_size == DEFAULT_MAX_BATCH_SIZE == 5000


def test_values_are_converted_to_their_types(tmp_path: Path) -> None:
    config = toml(tmp_path, "include_features = true\ndrain_timeout_s = 5\ntopic_partitions = 6\n")
    settings = run({"max_wait_ms": "0"}, {"SCORER_CREATE_TOPICS": "yes", "SCORER_LOG_LEVEL": "DEBUG"}, config)
    assert settings.include_features is True
    assert settings.create_topics is True
    assert settings.drain_timeout_s == 5.0
    assert isinstance(settings.drain_timeout_s, float)
    assert (settings.topic_partitions, settings.max_wait_ms, settings.log_level) == (6, 0, "DEBUG")


@pytest.mark.parametrize(
    ("text", "value"), [("1", True), ("TRUE", True), ("on", True), ("0", False), ("no", False), ("", False)]
)
def test_boolean_spellings(text: str, value: bool) -> None:
    assert run(env={"SCORER_INCLUDE_FEATURES": text}).include_features is value


# --- malformed values name the setting -----------------------------------------------------------------------


def test_malformed_int_from_env_names_the_variable() -> None:
    problem = error(lambda: run(env={"SCORER_MAX_WAIT_MS": "ten"}))
    assert problem.setting == "SCORER_MAX_WAIT_MS"
    assert str(problem) == "SCORER_MAX_WAIT_MS: has value 'ten'. Not a valid int"
    assert isinstance(problem, ValueError)


def test_malformed_float_from_flag_names_the_flag() -> None:
    problem = error(lambda: run({"drain_timeout_s": "soon"}))
    assert problem.setting == "--drain-timeout-s"
    assert "'soon'. Not a valid float" in str(problem)


def test_malformed_bool_names_the_variable() -> None:
    problem = error(lambda: run(env={"SCORER_INCLUDE_FEATURES": "maybe"}))
    assert problem.setting == "SCORER_INCLUDE_FEATURES"
    assert "Not a valid boolean" in str(problem)


def test_malformed_literal_from_file_names_the_file_key(tmp_path: Path) -> None:
    config = toml(tmp_path, "unknown_categories = 'drop'\n")
    problem = error(lambda: run(config=config))
    assert problem.setting == f"{config}: unknown_categories"
    assert "has value 'drop'; choose one of reject, score" in str(problem)


def test_log_level_is_a_literal_too() -> None:
    assert error(lambda: run({"log_level": "LOUD"})).setting == "--log-level"


@pytest.mark.parametrize(
    ("name", "value", "minimum"),
    [
        ("max_batch_size", "0", 1),
        ("max_wait_ms", "-1", 0),
        ("drain_timeout_s", "-0.5", 0),
        ("topic_partitions", "0", 1),
    ],
)
def test_values_below_the_minimum_are_refused(name: str, value: str, minimum: int) -> None:
    problem = error(lambda: run({name: value}))
    assert problem.setting == "--" + name.replace("_", "-")
    assert f"must be at least {minimum}" in str(problem)


@pytest.mark.parametrize("line", ["max_batch_size = 10.7", "max_wait_ms = true", "drain_timeout_s = nan"])
def test_typed_toml_values_are_not_silently_coerced(tmp_path: Path, line: str) -> None:
    config = toml(tmp_path, line + "\n")
    problem = error(lambda: run(config=config))
    assert problem.setting == f"{config}: {line.split()[0]}"


def test_invalid_or_missing_config_file(tmp_path: Path) -> None:
    assert error(lambda: run(config=toml(tmp_path, "max_batch_size = \n"))).setting == "--config"
    problem = error(lambda: run(config=tmp_path / "absent.toml"))
    assert problem.setting == "--config"
    assert "does not exist" in str(problem)


# --- unknown and required settings ---------------------------------------------------------------------------


def test_unknown_file_key_is_refused_naming_it(tmp_path: Path) -> None:
    config = toml(tmp_path, "max_batch_szie = 10\n")
    problem = error(lambda: run(config=config))
    assert problem.setting == f"{config}: max_batch_szie"
    assert "unknown setting" in str(problem)
    assert "max_batch_size" in str(problem)  # the list of known keys helps spot the typo


def test_unknown_scorer_environment_variable_is_refused_naming_it() -> None:
    problem = error(lambda: run(env={"SCORER_MAX_BATCH": "10"}))
    assert problem.setting == "SCORER_MAX_BATCH"


def test_other_scorer_variables_are_not_settings_errors() -> None:
    env = {"SCORER_CONFIG": "x.toml", "SCORER_STATE_DIR": "/tmp/s", "SCORER_TEST_BOOTSTRAP": "b:1", "HOME": "/root"}
    assert run(env=env).input_topic == "features"


def test_evaluate_only_settings_are_unknown_to_run() -> None:
    assert error(lambda: run(env={"SCORER_LABELS_TOPIC": "labels"})).setting == "SCORER_LABELS_TOPIC"


@pytest.mark.parametrize(
    ("variable", "named"),
    [
        ("SCORER_BOOTSTRAP_SERVERS", "--bootstrap-servers / SCORER_BOOTSTRAP_SERVERS"),
        ("SCORER_SCHEMA_REGISTRY_URL", "--schema-registry-url / SCORER_SCHEMA_REGISTRY_URL"),
        ("SCORER_INPUT_TOPIC", "--input-topic / SCORER_INPUT_TOPIC"),
        ("SCORER_OUTPUT_TOPIC", "--output-topic / SCORER_OUTPUT_TOPIC"),
        ("SCORER_MODEL", "--model / SCORER_MODEL"),
    ],
)
def test_required_settings_are_named(variable: str, named: str) -> None:
    env = {k: v for k, v in REQUIRED.items() if k != variable}
    problem = error(lambda: load_settings(RunSettings, {}, env))
    assert problem.setting == named
    assert "is required" in str(problem)


def test_evaluate_settings_name_their_required_settings() -> None:
    env = {k: v for k, v in REQUIRED.items() if k in {"SCORER_BOOTSTRAP_SERVERS", "SCORER_SCHEMA_REGISTRY_URL"}}
    problem = error(lambda: load_settings(EvaluateSettings, {"model": "/m"}, env))
    assert problem.setting == "--predictions-topic / SCORER_PREDICTIONS_TOPIC"
    settings = load_settings(EvaluateSettings, {"model": "/m", "predictions_topic": "p", "labels_topic": "l"}, env)
    assert settings.group_id == "scorer-evaluate"


# --- topics --------------------------------------------------------------------------------------------------


def test_dead_letter_topic_defaults_to_input_dot_dlq() -> None:
    assert run().dead_letter_topic == "features.dlq"
    assert run({"dead_letter_topic": "rejects"}).dead_letter_topic == "rejects"


def test_same_input_and_output_topic_is_refused() -> None:
    problem = error(lambda: run(env={"SCORER_OUTPUT_TOPIC": "features"}))
    assert problem.setting == "--output-topic"
    assert "three different topics" in str(problem)
    assert error(lambda: run({"dead_letter_topic": "predictions"})).setting == "--output-topic"


# --- kafka pass-through --------------------------------------------------------------------------------------


def test_kafka_settings_from_env_file_properties_and_flags(tmp_path: Path) -> None:
    properties = tmp_path / "client.properties"
    properties.write_text(
        "# librdkafka client\n\nsasl.mechanism = PLAIN\nclient.id=from-properties\nlinger.ms=5\nacks=1\n"
    )
    config = toml(
        tmp_path,
        f"kafka_config_file = '{properties}'\n[kafka]\n'client.id' = 'from-toml'\n'linger.ms' = 7\nacks = 'all'\n",
    )
    env = {"SCORER_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "SCORER_KAFKA_LINGER_MS": "9"}
    settings = run({"kafka_config": ["linger.ms=11", "compression.type = zstd"]}, env, config)
    assert settings.kafka_config == {
        "sasl.mechanism": "PLAIN",  # properties file
        "client.id": "from-toml",  # [kafka] table beats the properties file
        "acks": "all",
        "security.protocol": "SASL_SSL",  # environment beats the file
        "linger.ms": "11",  # flag beats everything
        "compression.type": "zstd",
    }
    assert settings.kafka_config_file == str(properties)
    assert settings.client_config() == {"bootstrap.servers": "broker:9092", **settings.kafka_config}


def test_kafka_properties_file_from_env(tmp_path: Path) -> None:
    properties = tmp_path / "client.properties"
    properties.write_text("sasl.password=s3cr3t-from-file\n")
    settings = run(env={"SCORER_KAFKA_CONFIG_FILE": str(properties)})
    assert settings.kafka_config == {"sasl.password": "s3cr3t-from-file"}
    assert "config.file" not in settings.kafka_config


def test_malformed_kafka_settings_are_named(tmp_path: Path) -> None:
    assert error(lambda: run({"kafka_config": ["linger.ms"]})).setting == "--kafka-config"
    assert error(lambda: run({"kafka_config": ["=5"]})).setting == "--kafka-config"
    missing = error(lambda: run({"kafka_config_file": str(tmp_path / "absent.properties")}))
    assert (missing.setting, "does not exist" in str(missing)) == ("--kafka-config-file", True)
    broken = tmp_path / "broken.properties"
    broken.write_text("acks=all\nlinger.ms 5\n")
    problem = error(lambda: run({"kafka_config_file": str(broken)}))
    assert problem.setting == "--kafka-config-file"
    assert f"{broken}:2 is not key=value" in str(problem)


# --- secrets -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "item",
    ["sasl.password=hunter2", "ssl.key.password=hunter2", "SASL.PASSWORD=hunter2", "basic.auth.user.info=u:hunter2"],
)
def test_secret_kafka_setting_on_the_command_line_is_refused(item: str) -> None:
    problem = error(lambda: run({"kafka_config": [item]}))
    assert problem.setting == "--kafka-config"
    assert "is a secret" in str(problem)
    assert "hunter2" not in str(problem)


def test_registry_credentials_on_the_command_line_are_refused() -> None:
    problem = error(lambda: run({"schema_registry_basic_auth": "user:hunter2"}))
    assert problem.setting == "--schema-registry-basic-auth"
    assert "SCORER_SCHEMA_REGISTRY_BASIC_AUTH" in str(problem)
    assert "hunter2" not in str(problem)


def test_secrets_from_env_and_file_are_accepted_and_never_printed(tmp_path: Path) -> None:
    config = toml(tmp_path, "[kafka]\n'ssl.key.password' = 'hunter3'\n'sasl.oauthbearer.client.secret' = 'hunter4'\n")
    env = {
        "SCORER_SCHEMA_REGISTRY_BASIC_AUTH": "user:hunter1",
        "SCORER_KAFKA_SASL_PASSWORD": "hunter2",
        "SCORER_KAFKA_SASL_USERNAME": "alice",
    }
    settings = run(env=env, config=config)
    assert settings.kafka_config["sasl.password"] == "hunter2"
    assert settings.registry_config()["basic.auth.user.info"] == "user:hunter1"
    for shown in (repr(settings), str(settings), f"{settings}", f"{settings!r}"):
        assert "hunter" not in shown
        assert "alice" in shown  # only secrets are hidden
        assert "***" in shown
        assert "RunSettings(" in shown


def test_registry_config_without_credentials() -> None:
    assert run().registry_config() == {"url": "http://registry:8081"}
    assert run(env={"SCORER_SCHEMA_REGISTRY_CA": "/ca.pem"}).registry_config()["ssl.ca.location"] == "/ca.pem"


def test_settings_are_frozen() -> None:
    settings = run()
    with pytest.raises(AttributeError):
        settings.max_batch_size = 5  # type: ignore[misc]


# --- ports ---------------------------------------------------------------------------------------------------

EVALUATE_REQUIRED = {
    "SCORER_BOOTSTRAP_SERVERS": "broker:9092",
    "SCORER_SCHEMA_REGISTRY_URL": "http://registry:8081",
    "SCORER_PREDICTIONS_TOPIC": "predictions",
    "SCORER_LABELS_TOPIC": "labels",
}


def evaluate(flags: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> EvaluateSettings:
    return load_settings(EvaluateSettings, flags or {}, {**EVALUATE_REQUIRED, **(env or {})})


@pytest.mark.parametrize("build", [run, evaluate], ids=["run", "evaluate"])
@pytest.mark.parametrize(
    ("flags", "env", "named", "message"),
    [
        ({}, {"SCORER_METRICS_PORT": "99999"}, "--metrics-port / SCORER_METRICS_PORT", "ports are 0-65535"),
        ({"metrics_port": "65536"}, {}, "--metrics-port / SCORER_METRICS_PORT", "ports are 0-65535"),
        ({"metrics_port": "-5"}, {}, "--metrics-port", "must be at least 0"),
        ({}, {"SCORER_METRICS_PORT": "-5"}, "SCORER_METRICS_PORT", "must be at least 0"),
    ],
)
def test_metrics_port_outside_0_to_65535_is_refused_naming_it(
    build: Any, flags: dict[str, Any], env: dict[str, str], named: str, message: str
) -> None:
    problem = error(lambda: build(flags, env))
    assert problem.setting == named
    assert message in str(problem)


@pytest.mark.parametrize("build", [run, evaluate], ids=["run", "evaluate"])
def test_metrics_port_bounds_and_defaults(build: Any) -> None:
    assert build({"metrics_port": "65535"}).metrics_port == 65535
    assert build(env={"SCORER_METRICS_PORT": "0"}).metrics_port == 0  # 0 turns the endpoint off
    assert build().metrics_port == (9400 if build is run else 9401)  # scorer and sidecar share a pod


# --- evaluate: the joiner's dedup memory ---------------------------------------------------------------------


def test_max_remembered_ids_default_is_the_joiners_and_it_can_be_set(tmp_path: Path) -> None:
    default = inspect.signature(LabelJoiner).parameters["max_remembered"].default
    assert evaluate().max_remembered_ids == default == 100_000
    assert evaluate(env={"SCORER_MAX_REMEMBERED_IDS": "500000"}).max_remembered_ids == 500_000
    assert evaluate({"max_remembered_ids": "7"}, {"SCORER_MAX_REMEMBERED_IDS": "500000"}).max_remembered_ids == 7
    config = toml(tmp_path, "max_remembered_ids = 250000\n")
    assert load_settings(EvaluateSettings, {}, EVALUATE_REQUIRED, config).max_remembered_ids == 250_000


@pytest.mark.parametrize(
    ("flags", "env", "named", "message"),
    [
        ({"max_remembered_ids": "0"}, {}, "--max-remembered-ids", "must be at least 1"),
        ({}, {"SCORER_MAX_REMEMBERED_IDS": "-1"}, "SCORER_MAX_REMEMBERED_IDS", "must be at least 1"),
        ({}, {"SCORER_MAX_REMEMBERED_IDS": "lots"}, "SCORER_MAX_REMEMBERED_IDS", "Not a valid int"),
        ({"max_remembered_ids": "1.5"}, {}, "--max-remembered-ids", "Not a valid int"),
    ],
)
def test_max_remembered_ids_must_be_a_positive_int(
    flags: dict[str, Any], env: dict[str, str], named: str, message: str
) -> None:
    problem = error(lambda: evaluate(flags, env))
    assert problem.setting == named
    assert message in str(problem)


def test_max_remembered_ids_is_unknown_to_run() -> None:
    assert error(lambda: run(env={"SCORER_MAX_REMEMBERED_IDS": "5"})).setting == "SCORER_MAX_REMEMBERED_IDS"


def test_the_sidecar_joiner_forgets_joined_ids_past_max_remembered_ids() -> None:
    """With room for one id, a pair redelivered after another id joined is evaluated again."""

    def prediction(record_id: str) -> PredictionFacts:
        return PredictionFacts(record_id, "churn", "3", "yes", 0.9, {"no": 0.1, "yes": 0.9})

    def deliver(joiner: LabelJoiner, record_id: str, now_ms: int) -> bool:
        """Prediction then label; True if they joined (and so would be evaluated)."""
        joiner.add_prediction(prediction(record_id), now_ms)
        return joiner.add_label(record_id, "yes", event_time_ms=now_ms, now_ms=now_ms) is not None

    small = EvaluationSidecar(evaluate({"max_remembered_ids": "1"}), CollectorRegistry()).joiner
    assert deliver(small, "a", 1_000) and deliver(small, "b", 2_000)
    assert not deliver(small, "b", 3_000)  # still remembered: a duplicate
    assert deliver(small, "a", 4_000)  # forgotten: joins a second time
    assert small.counts.joined == 3

    default = EvaluationSidecar(evaluate(), CollectorRegistry()).joiner
    assert deliver(default, "a", 1_000) and deliver(default, "b", 2_000)
    assert not deliver(default, "a", 4_000)
    assert default.counts.joined == 2


# --- labels --------------------------------------------------------------------------------------------------


def test_labels_topic_of_scorer_labels_comes_from_flag_env_or_file(tmp_path: Path) -> None:
    connection = {k: v for k, v in REQUIRED.items() if k in {"SCORER_BOOTSTRAP_SERVERS", "SCORER_SCHEMA_REGISTRY_URL"}}
    assert load_settings(LabelsSettings, {}, {**connection, "SCORER_LABELS_TOPIC": "truth"}).labels_topic == "truth"
    flagged = load_settings(LabelsSettings, {"labels_topic": "flag"}, {**connection, "SCORER_LABELS_TOPIC": "env"})
    assert flagged.labels_topic == "flag"
    config = toml(tmp_path, "labels_topic = 'from-file'\n")
    assert load_settings(LabelsSettings, {}, connection, config).labels_topic == "from-file"
    problem = error(lambda: load_settings(LabelsSettings, {}, connection))
    assert problem.setting == "--labels-topic / SCORER_LABELS_TOPIC"
    assert "is required" in str(problem)
