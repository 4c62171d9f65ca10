"""Unit tests of scorer.cli: ``--help`` documents every setting with its variable, and errors name what to fix."""

from __future__ import annotations

import dataclasses
import os
import re
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from scorer.cli import main
from scorer.config import EvaluateSettings, LabelsSettings, RunSettings, env_name, flag_name, load_settings
from scorer.errors import ConfigError

COMMANDS = {"run": RunSettings, "evaluate": EvaluateSettings, "labels": LabelsSettings}
CONNECTION = {"SCORER_BOOTSTRAP_SERVERS": "127.0.0.1:9", "SCORER_SCHEMA_REGISTRY_URL": "http://127.0.0.1:9"}
REQUIRED = {
    "run": {**CONNECTION, "SCORER_INPUT_TOPIC": "f", "SCORER_OUTPUT_TOPIC": "p", "SCORER_MODEL": "/m"},
    "evaluate": {**CONNECTION, "SCORER_PREDICTIONS_TOPIC": "p", "SCORER_LABELS_TOPIC": "l"},
    "labels": {**CONNECTION, "SCORER_LABELS_TOPIC": "l"},
}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No SCORER_* variable of the machine leaks in; wide help lines, so that text is not wrapped mid-token."""
    for key in [k for k in os.environ if k.startswith("SCORER_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("COLUMNS", "200")
    yield


def help_text(command: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    return capsys.readouterr().out


def option_help(text: str) -> dict[str, str]:
    """``--flag`` -> its help, whitespace collapsed, for every option in a ``--help`` output."""
    options: dict[str, str] = {}
    current = None
    for line in text[text.index("options:") :].splitlines()[1:]:
        match = re.match(r"\s{2}(-[-\w]+)", line)
        if match:
            current = match.group(1)
            options[current] = line
        elif current is not None:
            options[current] += " " + line
    return {flag: " ".join(words.split()) for flag, words in options.items()}


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Exit code and stderr of ``scorer argv``, whether argparse exits or ``main`` returns."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code  # type: ignore[assignment]
    return int(code), capsys.readouterr().err


# --- --help --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS)
def test_help_lists_every_setting_with_its_environment_variable(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    options = option_help(help_text(command, capsys))
    for spec in dataclasses.fields(COMMANDS[command]):
        flag = flag_name(spec.name)
        assert flag in options, f"{command} --help does not list {flag}"
        if spec.name == "kafka_config":
            assert "[env SCORER_KAFKA_<KEY>, one per setting" in options[flag]
        else:
            assert f"[env {env_name(spec.name)}" in options[flag], options[flag]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_names_no_variable_that_the_command_refuses(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    named = set(re.findall(r"\[env (SCORER_[A-Z0-9_]+)", help_text(command, capsys)))
    assert "SCORER_KAFKA_CONFIG" not in named  # refused: one SCORER_KAFKA_<KEY> per librdkafka setting instead
    assert len(named) > len(CONNECTION)
    for variable in sorted(named):
        try:
            load_settings(COMMANDS[command], {}, {**REQUIRED[command], variable: "1"})
        except ConfigError as exc:  # a value this setting cannot take is fine; an unknown variable is not
            assert exc.setting != variable or "not a setting of this command" not in str(exc), exc


@pytest.mark.parametrize("command", ["run", "evaluate"])
def test_help_explains_precedence_kafka_pass_through_and_credentials(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    description = " ".join(help_text(command, capsys).split("options:")[0].split())
    assert "Precedence: flags, then environment, then the config file, then the defaults" in description
    for way in ("[kafka] table", "SCORER_KAFKA_<KEY>", "--kafka-config KEY=VALUE", "--kafka-config-file"):
        assert way in description, way
    assert "SCORER_SCHEMA_REGISTRY_BASIC_AUTH" in description
    assert "refused on the command line" in description


# --- errors --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["run", "evaluate", "labels"])
def test_unknown_flag_fails_naming_it(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_main([command, "--max-batch-szie", "5"], capsys)
    assert code == 2
    assert "unrecognized arguments: --max-batch-szie" in err


def test_metrics_port_out_of_range_exits_2_naming_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for key, value in REQUIRED["run"].items():
        monkeypatch.setenv(key, value)
    code, err = run_main(["run", "--metrics-port", "99999"], capsys)
    assert code == 2
    assert err == "scorer: error: --metrics-port / SCORER_METRICS_PORT: has value 99999; ports are 0-65535\n"


def test_metrics_port_in_use_stops_evaluate_at_start_up_naming_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for key, value in REQUIRED["evaluate"].items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr("signal.signal", lambda *_args: None)  # _serve would install pytest-wide handlers
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, err = run_main(["evaluate", "--metrics-host", "127.0.0.1", "--metrics-port", str(port)], capsys)
    assert code == 2
    assert err.startswith(
        f"scorer: error: --metrics-port / SCORER_METRICS_PORT: cannot serve /metrics on 127.0.0.1:{port}"
    )


def test_labels_topic_can_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Any
) -> None:
    for key, value in CONNECTION.items():
        monkeypatch.setenv(key, value)
    absent = tmp_path / "truth.csv"
    code, err = run_main(["labels", str(absent)], capsys)
    assert (code, err) == (2, "scorer: error: --labels-topic / SCORER_LABELS_TOPIC: is required\n")
    monkeypatch.setenv("SCORER_LABELS_TOPIC", "labels")
    code, err = run_main(["labels", str(absent)], capsys)  # past the settings: now the file is what is missing
    assert (code, err) == (2, f"scorer: error: FILE: {absent} does not exist\n")
