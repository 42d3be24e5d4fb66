"""The ClickHouse sink app: every record topic of the catalog → its table, and every
dead-letter topic of the namespace (``<prefix>dlq.*``, found on the broker at start) →
``dead_letters``.

One :class:`sinks.clickhouse.ClickHouseSink` takes every topic, so one checkpoint flushes
them together: each table gets one INSERT per checkpoint, the tables in parallel. A
checkpoint ends after ``clickhouse.flush_interval_s`` (1 s) or ``clickhouse.batch_size``
records (50k), whichever comes first; offsets are committed only after the inserts.
"""

from __future__ import annotations

import logging

from quixstreams.dataframe import StreamingDataFrame

from core.clickhouse import ClickHouse, announce_query_server, connect_clickhouse
from core.config import Settings
from core.kafka import admin_client
from sinks.clickhouse import AuditTable, ClickHouseSink, DeadLetterTable, table_specs
from sinks.migrations import migrate
from sinks.query_server import QueryServer
from streams.runtime import StreamApp

log = logging.getLogger(__name__)


def dead_letter_topics(settings: Settings) -> list[str]:
    """The namespace's dead-letter topics that exist on the broker."""
    prefix = f"{settings.topic_prefix}dlq."
    topics = admin_client(settings).list_topics(timeout=30).topics
    return sorted(name for name in topics if name.startswith(prefix))


def build(settings: Settings, name: str) -> tuple[StreamApp, ClickHouseSink]:
    """The app under the stage name the registry gives it (its group and dead letters)."""
    conf = settings.clickhouse
    extra = {"group.instance.id": conf.sink_instance_id} if conf.sink_instance_id else None
    stream = StreamApp(
        settings,
        name,
        commit_interval=conf.flush_interval_s,
        commit_every=conf.batch_size,
        # writes to ClickHouse, not Kafka: each row is stored once by its (partition, offset)
        processing_guarantee="at-least-once",
        consumer_extra=extra,
    )
    with connect_clickhouse(settings, writer=True) as client:
        migrate(client, conf.database, tick_ttl_days=conf.tick_ttl_days)
    tables: dict[str, AuditTable] = {}
    frames: list[StreamingDataFrame] = []
    for logical, table in table_specs().items():
        frames.append(stream.dataframe(logical))
        tables[stream.names.name(logical)] = table
    dead_letters = DeadLetterTable()
    for topic_name in dead_letter_topics(settings):
        topic = stream.app.topic(topic_name, key_deserializer="bytes", value_deserializer="bytes")
        frames.append(stream.app.dataframe(topic))
        tables[topic_name] = dead_letters

    def connect() -> ClickHouse:
        return connect_clickhouse(settings, writer=True)

    sink = ClickHouseSink(connect, conf.database, tables, threads=conf.insert_threads)
    stream.on_assign(sink.assigned)
    for sdf in frames:
        sdf.sink(sink)
    return stream, sink


def serve_queries(settings: Settings) -> QueryServer | None:
    """The embedded store's read-only HTTP interface, while this process owns the chDB
    directory (announced there, so `omniquant sql` and `report` find it). None with a
    ClickHouse server, which has its own, or when ``clickhouse.query_port`` is unset."""
    conf = settings.clickhouse
    if conf.url is not None or conf.query_port is None:
        return None
    try:
        server = QueryServer(
            settings.chdb_path, conf.query_host, conf.query_port, display_name="omniquant-chdb"
        ).start()
    except OSError as exc:
        # Writing the audit trail matters more than reading it live: go on without.
        log.error(
            "the audit store's HTTP interface could not start; live queries are off",
            extra={"port": conf.query_port, "error": str(exc)},
        )
        return None
    announce_query_server(settings.chdb_path, server.url)
    log.info("serving the audit store read-only over HTTP", extra={"url": server.url})
    return server


def run(settings: Settings, *, name: str) -> None:
    stream, sink = build(settings, name)
    server = serve_queries(settings)
    try:
        stream.run()
    finally:
        if server is not None:
            announce_query_server(settings.chdb_path, None)
            server.stop()
        sink.close()
