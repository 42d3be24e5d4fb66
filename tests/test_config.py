"""Typed configuration: bad values fail at start naming the variable; secrets stay hidden."""

from __future__ import annotations

import logging
from decimal import Decimal

import pytest

from core.config import load_settings, mask_url
from core.errors import ConfigError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("OMNIQUANT_") or name in {
            "KAFKA_BOOTSTRAP_SERVERS",
            "REDIS_URL",
            "CLICKHOUSE_URL",
            "SCHEMA_REGISTRY_URL",
            "MASSIVE_API_KEY",
            "POLYGON_API_KEY",
            "APCA_API_KEY_ID",
            "APCA_API_SECRET_KEY",
        }:
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray .env


def test_defaults_use_the_local_stack() -> None:
    s = load_settings()
    assert s.uses_local_kafka and s.uses_local_redis
    assert s.kafka_bootstrap() == "127.0.0.1:19092"
    assert s.redis_url() == "redis://127.0.0.1:16379/0"
    assert s.topic_prefix == "omniquant."
    assert s.risk.max_order_notional == Decimal("250000")


def test_invalid_partitions_names_the_environment_variable(monkeypatch) -> None:
    monkeypatch.setenv("OMNIQUANT_KAFKA__PARTITIONS", "0")
    with pytest.raises(ConfigError, match="OMNIQUANT_KAFKA__PARTITIONS"):
        load_settings()


def test_non_numeric_risk_limit_names_the_environment_variable(monkeypatch) -> None:
    monkeypatch.setenv("OMNIQUANT_RISK__MAX_ORDER_NOTIONAL", "lots")
    with pytest.raises(ConfigError, match="OMNIQUANT_RISK__MAX_ORDER_NOTIONAL"):
        load_settings()


def test_bad_bootstrap_servers_is_rejected(monkeypatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "localhost")
    with pytest.raises(ConfigError, match="bootstrap_servers"):
        load_settings()


def test_sasl_without_credentials_is_rejected(monkeypatch) -> None:
    monkeypatch.setenv("OMNIQUANT_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("OMNIQUANT_KAFKA__SASL_MECHANISM", "SCRAM-SHA-512")
    with pytest.raises(ConfigError, match="sasl_username and sasl_password"):
        load_settings()


def test_the_sasl_password_can_come_from_a_file_a_mounted_secret(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("OMNIQUANT_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("OMNIQUANT_KAFKA__SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("OMNIQUANT_KAFKA__SASL_USERNAME", "risk-gate")
    secret = tmp_path / "risk-gate"
    secret.write_text("file-secret-42\n")  # as `kubectl create secret --from-file` leaves it
    monkeypatch.setenv("OMNIQUANT_KAFKA__SASL_PASSWORD_FILE", str(secret))
    s = load_settings()
    assert s.kafka_client_config()["sasl.password"] == "file-secret-42"
    assert "file-secret-42" not in repr(s) + s.model_dump_json()
    for content, reason in (("", "is empty"), (None, "No such file")):
        if content is None:
            secret.unlink()
        else:
            secret.write_text(content)
        with pytest.raises(ConfigError, match="sasl_password_file") as exc:
            load_settings()
        assert reason in str(exc.value)
    secret.write_text("file-secret-42")
    monkeypatch.setenv("OMNIQUANT_KAFKA__SASL_PASSWORD", "env-secret")
    with pytest.raises(ConfigError, match="not both") as exc:
        load_settings()
    assert "env-secret" not in str(exc.value) and "file-secret-42" not in str(exc.value)


def test_fast_window_must_be_below_slow_window(monkeypatch) -> None:
    monkeypatch.setenv("OMNIQUANT_STRATEGY__FAST_WINDOW", "30")
    with pytest.raises(ConfigError, match="OMNIQUANT_STRATEGY"):
        load_settings()


def test_bad_topic_prefix_is_rejected(monkeypatch) -> None:
    monkeypatch.setenv("OMNIQUANT_TOPIC_PREFIX", "has space.")
    with pytest.raises(ConfigError, match="topic_prefix"):
        load_settings()


def test_well_known_variables_are_honoured(monkeypatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    monkeypatch.setenv("REDIS_URL", "redis://:pw@r:6379/1")
    monkeypatch.setenv("APCA_API_KEY_ID", "AKID")
    s = load_settings()
    assert s.kafka_bootstrap() == "k1:9092,k2:9092" and not s.uses_local_kafka
    assert s.redis_url() == "redis://:pw@r:6379/1"
    assert s.feeds.alpaca_api_key_id is not None
    assert s.feeds.alpaca_api_key_id.get_secret_value() == "AKID"


def test_prefixed_variable_wins_over_well_known_one(monkeypatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "generic:1")
    monkeypatch.setenv("OMNIQUANT_KAFKA__BOOTSTRAP_SERVERS", "specific:2")
    assert load_settings().kafka_bootstrap() == "specific:2"


def test_env_file_is_read(tmp_path, monkeypatch) -> None:
    (tmp_path / ".env").write_text("OMNIQUANT_TOPIC_PREFIX=bt-7.\n")
    assert load_settings().topic_prefix == "bt-7."


def test_secrets_never_appear_in_repr_logs_or_errors(monkeypatch, caplog) -> None:
    monkeypatch.setenv("OMNIQUANT_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("OMNIQUANT_KAFKA__SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("OMNIQUANT_KAFKA__SASL_USERNAME", "svc")
    monkeypatch.setenv("OMNIQUANT_KAFKA__SASL_PASSWORD", "hunter2-secret")
    monkeypatch.setenv("REDIS_URL", "redis://:redis-secret@r:6379/0")
    monkeypatch.setenv("MASSIVE_API_KEY", "massive-secret")
    s = load_settings()
    text = repr(s) + str(s) + s.model_dump_json()
    with caplog.at_level(logging.INFO):
        logging.getLogger("t").info("settings %s", s)
    text += caplog.text
    for secret in ("hunter2-secret", "redis-secret", "massive-secret"):
        assert secret not in text
    # ... but the client gets the real value
    assert s.kafka_client_config()["sasl.password"] == "hunter2-secret"
    # an invalid value next to secrets: the error names the setting, not the secret
    monkeypatch.setenv("OMNIQUANT_KAFKA__PARTITIONS", "-1")
    with pytest.raises(ConfigError) as exc:
        load_settings()
    assert "hunter2-secret" not in str(exc.value)


def test_mask_url_hides_password_only() -> None:
    assert mask_url("redis://:pw@host:6379/0") == "redis://:***@host:6379/0"
    assert mask_url("http://user:pw@ch:8123") == "http://user:***@ch:8123"
    assert mask_url("redis://host:6379") == "redis://host:6379"


def test_a_missing_or_malformed_fo_ban_file_stops_the_gate_at_start_naming_it(tmp_path) -> None:
    from core.errors import ConfigError
    from streams.risk_gate import FoBanFile

    with pytest.raises(ConfigError, match="OMNIQUANT_RISK__FO_BAN_FILE"):
        load_settings(risk={"fo_ban_file": tmp_path / "nope.csv"})
    bad = tmp_path / "fo_secban.csv"
    bad.write_text("serial,symbol\n1,SAIL\n")
    settings = load_settings(risk={"fo_ban_file": bad})
    with pytest.raises(ConfigError, match="OMNIQUANT_RISK__FO_BAN_FILE: F&O ban list line 1"):
        FoBanFile(settings.risk.fo_ban_file)
    bad.write_text("Securities in Ban For Trade Date 07-OCT-2026:\n1,SAIL\n")
    loaded = FoBanFile(settings.risk.fo_ban_file).current()
    assert loaded is not None and loaded.symbols == {"SAIL"}


def test_a_local_cluster_lists_every_node_and_replicates_topics_three_ways() -> None:
    single = load_settings(stack={"kafka_port": 30000, "kafka_controller_port": 30001})
    assert single.kafka_bootstrap() == "127.0.0.1:30000"
    assert single.topic_replication_factor() == 1
    three = load_settings(
        stack={"kafka_port": 30000, "kafka_controller_port": 30001, "kafka_brokers": 3}
    )
    assert three.local_kafka_ports() == [(30000, 30001), (30002, 30003), (30004, 30005)]
    assert three.kafka_bootstrap() == "127.0.0.1:30000,127.0.0.1:30002,127.0.0.1:30004"
    assert three.topic_replication_factor() == 3
    explicit = load_settings(stack={"kafka_brokers": 3}, kafka={"replication_factor": 2})
    assert explicit.topic_replication_factor() == 2
    # someone else's cluster: its own default.replication.factor, not a fixed 1
    external = load_settings(kafka={"bootstrap_servers": "10.0.0.1:9092"})
    assert external.topic_replication_factor() is None
    pinned = load_settings(kafka={"bootstrap_servers": "10.0.0.1:9092", "replication_factor": 3})
    assert pinned.topic_replication_factor() == 3
