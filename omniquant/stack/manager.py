"""The local stack behind `omniquant up/down/status`: Kafka, Redis and ClickHouse.

A service whose address is configured (KAFKA_BOOTSTRAP_SERVERS, REDIS_URL, CLICKHOUSE_URL) is
external: it is only checked, never started or stopped. Otherwise Kafka and Redis run as local
processes under ``settings.state_dir``, and ClickHouse is chDB, embedded in each process that
queries it, so "starting" it means making sure its data directory exists.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from core.config import Settings, mask_url
from core.errors import OmniquantError
from omniquant.stack.kafka import LocalKafka, LocalKafkaCluster, kafka_answers
from omniquant.stack.redis import LocalRedis
from omniquant.stack.secure import StackSecrets

__all__ = ["LocalStack", "ServiceStatus"]

_CHECK_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class ServiceStatus:
    """One service as `omniquant status` shows it (``address`` never holds a password)."""

    name: str
    address: str
    managed: bool
    answering: bool
    detail: str


class LocalStack:
    """Starts, stops and checks the services that ``settings`` asks for."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        stack = settings.stack
        self.secrets = StackSecrets(settings.state_dir) if stack.kafka_secure else None
        self.kafka: LocalKafka | LocalKafkaCluster
        if stack.kafka_brokers > 1:
            self.kafka = LocalKafkaCluster(
                settings.state_dir,
                settings.local_kafka_ports(),
                heap=stack.kafka_heap,
                start_timeout_s=max(stack.start_timeout_s, 90.0),
                secure=self.secrets,
            )
        else:
            self.kafka = LocalKafka(
                settings.state_dir,
                port=stack.kafka_port,
                controller_port=stack.kafka_controller_port,
                heap=stack.kafka_heap,
                start_timeout_s=stack.start_timeout_s,
                secure=self.secrets,
            )
        self.redis = LocalRedis(
            settings.state_dir, port=stack.redis_port, start_timeout_s=stack.start_timeout_s
        )

    def up(self) -> list[ServiceStatus]:
        """Start what is local (waiting until it answers), check what is external."""
        return [self._kafka_up(), self._redis_up(), self._clickhouse_up()]

    def down(self) -> None:
        """Stop the local Kafka and Redis (their data stays in the state dir)."""
        if self.settings.uses_local_kafka:
            self.kafka.stop()
            # nodes of a cluster started with other settings (`up --brokers N`): their pid
            # files are enough to stop them
            for home in sorted((self.settings.state_dir / "kafka").glob("node-*")):
                LocalKafka(self.settings.state_dir, 0, 0, home=home).stop()
        if self.settings.uses_local_redis:
            self.redis.stop()

    def status(self) -> list[ServiceStatus]:
        """Each service, and whether it answers now; starts nothing."""
        return [self._kafka_status(), self._redis_status(), self._clickhouse_status()]

    # ---- Kafka ---------------------------------------------------------------------------
    def _kafka_up(self) -> ServiceStatus:
        if not self.settings.uses_local_kafka:
            return self._kafka_status()
        pid = self.kafka.pid()
        if pid is not None and self.kafka.answers():
            return self._kafka(True, f"already running (pid {pid})")
        if self.secrets is not None:
            self.secrets.ensure()  # CA, broker certificate, broker and admin passwords
        took = self.kafka.start()
        return self._kafka(True, f"started in {took:.1f} s (pid {self.kafka.pid()})")

    def _kafka_status(self) -> ServiceStatus:
        if not self.settings.uses_local_kafka:
            answering = kafka_answers(self.settings.kafka_client_config(), _CHECK_TIMEOUT_S)
            return self._kafka(answering, "external cluster" + ("" if answering else ", no answer"))
        pid = self.kafka.pid()
        if pid is None:
            return self._kafka(False, "not running")
        if self.secrets is not None and not self.secrets.exists():
            return self._kafka(False, f"pid {pid}; no credentials in {self.secrets.directory}")
        answering = self.kafka.answers(_CHECK_TIMEOUT_S)
        return self._kafka(answering, f"pid {pid}" + ("" if answering else ", not answering"))

    def _kafka(self, answering: bool, detail: str) -> ServiceStatus:
        if self.secrets is not None and self.settings.uses_local_kafka:
            detail += "; SASL_SSL (SCRAM-SHA-512), ACLs"
        return ServiceStatus(
            "kafka",
            self.settings.kafka_bootstrap(),
            self.settings.uses_local_kafka,
            answering,
            detail,
        )

    # ---- Redis ---------------------------------------------------------------------------
    def _redis_up(self) -> ServiceStatus:
        if not self.settings.uses_local_redis:
            return self._redis_status()
        pid = self.redis.pid()
        if pid is not None and self.redis.answers():
            return self._redis(True, f"already running (pid {pid})")
        took = self.redis.start()
        return self._redis(True, f"started in {took:.1f} s (pid {self.redis.pid()})")

    def _redis_status(self) -> ServiceStatus:
        if not self.settings.uses_local_redis:
            answering = _redis_answers(self.settings.redis_url())
            return self._redis(answering, "external server" + ("" if answering else ", no answer"))
        pid = self.redis.pid()
        if pid is None:
            return self._redis(False, "not running")
        answering = self.redis.answers(_CHECK_TIMEOUT_S)
        return self._redis(answering, f"pid {pid}" + ("" if answering else ", not answering"))

    def _redis(self, answering: bool, detail: str) -> ServiceStatus:
        return ServiceStatus(
            "redis",
            mask_url(self.settings.redis_url()),
            self.settings.uses_local_redis,
            answering,
            detail,
        )

    # ---- ClickHouse ----------------------------------------------------------------------
    def _clickhouse_up(self) -> ServiceStatus:
        if self.settings.clickhouse.url is None:
            self.settings.chdb_path.mkdir(parents=True, exist_ok=True)
        return self._clickhouse_status()

    def _clickhouse_status(self) -> ServiceStatus:
        url = self.settings.clickhouse.url
        if url is None:
            path = self.settings.chdb_path
            # Not opened here: a running pipeline's sink may own the directory (one process
            # per chDB directory), and embedded chDB "answers" whenever its directory is there.
            exists = path.is_dir()
            detail = "embedded chDB" if exists else "embedded chDB; directory not created yet"
            return ServiceStatus("clickhouse", str(path), True, exists, detail)
        from core.clickhouse import ServerClickHouse

        address = mask_url(url.get_secret_value())
        try:
            with ServerClickHouse(url.get_secret_value(), _CHECK_TIMEOUT_S) as client:
                version = client.query("SELECT version()").rows[0][0]
        except OmniquantError as exc:
            return ServiceStatus("clickhouse", address, False, False, f"no answer: {exc}")
        return ServiceStatus("clickhouse", address, False, True, f"server {version}")


def _redis_answers(url: str) -> bool:
    client = redis.Redis.from_url(
        url,
        socket_timeout=_CHECK_TIMEOUT_S,
        socket_connect_timeout=_CHECK_TIMEOUT_S,
        retry=Retry(NoBackoff(), 0),  # a status check, not a client that must get through
    )
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()
