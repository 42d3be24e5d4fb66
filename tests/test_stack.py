"""The local stack: a real Kafka KRaft broker on Java, a real redis-server, and LocalStack."""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest
import redis
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from core.config import Settings, load_settings
from core.errors import JavaNotFoundError, StackError
from omniquant.stack._process import pid_alive
from omniquant.stack.kafka import LocalKafka, find_java
from omniquant.stack.manager import LocalStack
from omniquant.stack.redis import LocalRedis

pytestmark = pytest.mark.integration

_ADDRESS_VARS = ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL", "CLICKHOUSE_URL")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _new_kafka(state_dir: Path) -> LocalKafka:
    return LocalKafka(
        state_dir, port=_free_port(), controller_port=_free_port(), heap="384m",
        start_timeout_s=120,
    )  # fmt: skip


@pytest.fixture
def kafka(tmp_path: Path) -> Iterator[LocalKafka]:
    broker = _new_kafka(tmp_path / "stack")
    yield broker
    broker.stop()


def _create_topic(bootstrap: str, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(30)


def _produce(bootstrap: str, topic: str, value: bytes) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    producer.produce(topic, value=value, key=b"k")
    assert producer.flush(30) == 0


def _consume_one(bootstrap: str, topic: str) -> bytes:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"g{uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
        }
    )
    try:
        consumer.subscribe([topic])
        for _ in range(60):
            msg = consumer.poll(1.0)
            if msg is not None and msg.error() is None:
                value: bytes | None = msg.value()
                assert value is not None
                return value
        raise AssertionError(f"nothing consumed from {topic}")
    finally:
        consumer.close()


def _empty_dir(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.mkdir()
    return path


# ---- LocalKafka ------------------------------------------------------------------------
def test_local_kafka_on_free_ports_round_trips_a_record_and_stops_without_a_trace(
    kafka: LocalKafka,
) -> None:
    took = kafka.start()

    assert took > 0
    assert kafka.answers(timeout=5)
    pid = kafka.pid()
    assert pid is not None and int(kafka.pid_file.read_text()) == pid
    _create_topic(kafka.bootstrap, "roundtrip")
    _produce(kafka.bootstrap, "roundtrip", b"hello")
    assert _consume_one(kafka.bootstrap, "roundtrip") == b"hello"
    assert (kafka.log_dir / "server.log").stat().st_size > 0

    assert kafka.stop() is True
    assert not pid_alive(pid)
    assert not kafka.pid_file.exists()
    assert not kafka.is_running()
    assert not _port_open(kafka.port)
    assert not kafka.answers(timeout=1)
    assert kafka.stop() is False  # stopping a stopped broker is a no-op


def test_restarted_local_kafka_reuses_its_storage_and_keeps_topics(kafka: LocalKafka) -> None:
    kafka.start()
    cluster_id = kafka.cluster_id()
    meta = kafka.data_dir / "meta.properties"
    formatted_at = meta.stat().st_mtime_ns
    _create_topic(kafka.bootstrap, "kept")
    _produce(kafka.bootstrap, "kept", b"still here")
    kafka.stop()

    kafka.start()

    assert cluster_id is not None and kafka.cluster_id() == cluster_id
    assert meta.stat().st_mtime_ns == formatted_at  # not formatted again
    assert _consume_one(kafka.bootstrap, "kept") == b"still here"


def test_starting_a_running_local_kafka_again_keeps_the_same_process(kafka: LocalKafka) -> None:
    kafka.start()
    pid = kafka.pid()

    second = LocalKafka(kafka.home.parent, kafka.port, kafka.controller_port)  # e.g. a new CLI
    took = second.start()

    assert second.pid() == pid
    assert took < 2.0
    assert second.stop() is True
    assert not kafka.is_running()


def test_local_kafka_on_a_taken_port_raises_stack_error_naming_the_port(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        broker = LocalKafka(tmp_path, port=taken, controller_port=_free_port())

        with pytest.raises(StackError, match=f"port {taken} .*already in use"):
            broker.start()
    assert not broker.pid_file.exists()


def test_local_kafka_jvm_that_dies_while_starting_raises_with_its_log(tmp_path: Path) -> None:
    broker = LocalKafka(tmp_path, _free_port(), _free_port(), heap="1k", start_timeout_s=60)

    with pytest.raises(StackError, match="exited while starting") as err:
        broker.start()

    assert "Too small" in str(err.value)  # the JVM's own complaint, from stdout.log
    assert not broker.is_running()


def test_missing_java_raises_java_not_found_naming_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(_empty_dir(tmp_path, "bin")))
    broker = LocalKafka(tmp_path / "stack", _free_port(), _free_port())

    with pytest.raises(JavaNotFoundError, match="apt-get install openjdk-17-jre-headless"):
        broker.start()


def test_java_home_without_java_raises_java_not_found_naming_java_home(tmp_path: Path) -> None:
    home = _empty_dir(tmp_path, "jdk")

    with pytest.raises(JavaNotFoundError, match=f"JAVA_HOME is {home}"):
        find_java({"JAVA_HOME": str(home), "PATH": os.environ["PATH"]})


def test_java_older_than_17_is_refused_with_its_version(tmp_path: Path) -> None:
    # A stand-in for an old runtime: prints what Java 11 prints for `java -version`.
    bin_dir = _empty_dir(tmp_path, "bin")
    java = bin_dir / "java"
    java.write_text("#!/bin/sh\necho 'openjdk version \"11.0.22\" 2024-01-16' >&2\n")
    java.chmod(java.stat().st_mode | stat.S_IXUSR)

    with pytest.raises(JavaNotFoundError, match=r"is Java 11; .*needs Java 17"):
        find_java({"PATH": str(bin_dir)})


def test_java_on_path_is_found_when_java_home_is_unset() -> None:
    java = find_java({"PATH": os.environ["PATH"]})

    assert java.name == "java"


def test_missing_maven_on_a_cold_cache_raises_stack_error_naming_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    java_home = find_java().resolve().parent.parent
    monkeypatch.setenv("JAVA_HOME", str(java_home))
    monkeypatch.setenv("PATH", str(_empty_dir(tmp_path, "bin")))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    broker = LocalKafka(tmp_path / "stack", _free_port(), _free_port())

    with pytest.raises(StackError, match="apt-get install maven"):
        broker.start()


# ---- LocalRedis ------------------------------------------------------------------------
def test_local_redis_answers_ping_then_stops(tmp_path: Path) -> None:
    server = LocalRedis(tmp_path, port=_free_port())
    try:
        server.start()
        client = redis.Redis.from_url(server.url)
        assert client.ping() is True
        client.set("k", "v")
        assert client.get("k") == b"v"
        assert client.config_get("appendonly") == {"appendonly": "no"}
        client.close()
        pid = server.pid()
        assert pid is not None
    finally:
        stopped = server.stop()

    assert stopped is True
    assert not pid_alive(pid)
    assert not server.answers()
    assert not server.pid_file.exists()


def test_missing_redis_server_raises_stack_error_naming_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(_empty_dir(tmp_path, "bin")))

    with pytest.raises(StackError, match="apt-get install redis-server"):
        LocalRedis(tmp_path, port=_free_port()).start()


# ---- LocalStack ------------------------------------------------------------------------
def _local_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **overrides: object
) -> Settings:
    for var in _ADDRESS_VARS:
        monkeypatch.delenv(var, raising=False)
    return load_settings(
        state_dir=tmp_path / "state",
        stack={
            "kafka_port": _free_port(),
            "kafka_controller_port": _free_port(),
            "redis_port": _free_port(),
            "kafka_heap": "384m",
            "start_timeout_s": 120,
        },
        **overrides,
    )


def test_stack_status_reports_services_that_are_not_started_as_not_answering(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = LocalStack(_local_settings(tmp_path, monkeypatch))

    status = {s.name: s for s in stack.status()}

    assert set(status) == {"kafka", "redis", "clickhouse"}
    assert status["kafka"].managed and not status["kafka"].answering
    assert status["kafka"].detail == "not running"
    assert status["redis"].managed and not status["redis"].answering
    assert not status["clickhouse"].answering  # chDB directory not created yet


def test_stack_up_starts_kafka_and_redis_and_down_stops_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _local_settings(tmp_path, monkeypatch)
    stack = LocalStack(settings)
    try:
        up = {s.name: s for s in stack.up()}
        again = {s.name: s for s in stack.up()}
    finally:
        stack.down()
    after = {s.name: s for s in stack.status()}

    assert all(s.answering and s.managed for s in up.values()), up
    assert up["kafka"].detail.startswith("started in")
    assert up["kafka"].address == f"127.0.0.1:{settings.stack.kafka_port}"
    assert again["kafka"].detail.startswith("already running")
    assert again["redis"].detail.startswith("already running")
    assert settings.chdb_path.is_dir()
    assert not after["kafka"].answering and after["kafka"].detail == "not running"
    assert not after["redis"].answering
    assert not stack.kafka.pid_file.exists()


def test_stack_with_external_services_checks_them_without_starting_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kafka_bootstrap: str, redis_url: str
) -> None:
    password_url = "redis://:hunter2@127.0.0.1:1/0"  # nothing listens on port 1
    settings = _local_settings(
        tmp_path, monkeypatch, kafka={"bootstrap_servers": kafka_bootstrap},
        redis={"url": password_url},
    )  # fmt: skip
    stack = LocalStack(settings)

    status = {s.name: s for s in stack.up()}

    assert status["kafka"].answering and not status["kafka"].managed
    assert status["kafka"].address == kafka_bootstrap
    assert not status["redis"].answering and not status["redis"].managed
    assert "hunter2" not in status["redis"].address and "***" in status["redis"].address
    assert not stack.kafka.pid_file.exists() and not stack.redis.pid_file.exists()
    stack.down()  # leaves external services alone
    assert redis.Redis.from_url(redis_url).ping()
