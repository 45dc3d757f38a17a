"""The archived topics as bounded Spark DataFrames: a well-defined slice of the Kafka log.

The offsets are resolved once, before the job, and passed to Spark's Kafka source as explicit
startingOffsets/endingOffsets; the result records them, so a reprocessing says exactly which
records it read (and a rerun over the same offsets reads the same records).

Both the offset lookup (aiokafka) and Spark's Kafka source (the Java client) connect with the live
chain's security settings (quax_faust/connection.py): TLS, SASL/SCRAM.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from quax_faust import connection
from quax_faust.core import run_meta
from quax_faust.core.errors import QuaxError
from quax_faust.settings import Settings
from quax_faust.connection import partition_counts

log = logging.getLogger("quax.spark")

RECEIVE_BUFFER_BYTES = 4 << 20
"""Socket buffer of Spark's Kafka consumer: the 64 KiB default throttles MiB-sized records."""

TASK_BYTES = 64 << 20
"""Records one Spark task reads (and keeps persisted) at most, about: a few 3 MiB slice messages
or ~1,300 file spectra."""

FETCH_MIN_BYTES = 1 << 20
"""Smallest fetch of the Spark Kafka source per partition (bytes)."""

Bounds = dict[int, tuple[int, int]]
"""Kafka partition -> [start, end) offsets."""


async def _topic_bounds(settings: Settings, topic: str) -> Bounds:
    n_partitions = (await partition_counts(settings, [topic])).get(topic)
    if not n_partitions:
        raise RuntimeError(f"topic {topic!r} does not exist on {settings.broker}")
    consumer = AIOKafkaConsumer(**connection.client_options(settings), enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(n_partitions)]
        start = await consumer.beginning_offsets(tps)
        end = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    return {tp.partition: (start[tp], end[tp]) for tp in tps}


def topic_bounds(settings: Settings, topic: str) -> Bounds:
    """Each partition's [first retained offset, end offset) of topic, now."""
    return asyncio.run(_topic_bounds(settings, topic))


def read_tasks(bounds: Bounds, record_bytes: int, task_bytes: int = TASK_BYTES) -> int:
    """Spark tasks to read bounds in: one per Kafka partition at least, and as many more as keep
    a task near task_bytes of records of record_bytes each."""
    n_records = sum(end - start for start, end in bounds.values())
    per_task = max(1, task_bytes // max(1, record_bytes))
    return max(len(bounds), -(-n_records // per_task))


def read_topic(spark: SparkSession, settings: Settings, topic: str, bounds: Bounds,
               key_filter, *, tasks: int | None = None, record_bytes: int | None = None) -> DataFrame:
    """Records of topic within bounds whose key passes key_filter (a Column on the string key),
    as columns key, value (binary), partition, offset; one Spark partition per Kafka partition,
    or ``tasks`` partitions (read_tasks), each Kafka partition cut into offset ranges: a week's
    spectra topic is one partition of ~7 GB, more than one task's memory. Fetches hold a few
    records of ``record_bytes`` (default: up to max_message_bytes): Spark keeps each task's last
    fetch for minutes, and a hundred tasks' 32 MiB fetches fill a 1 GiB heap."""
    fetch = settings.max_message_bytes if record_bytes is None else \
        min(settings.max_message_bytes, max(FETCH_MIN_BYTES, 4 * record_bytes))
    start = {topic: {str(p): b[0] for p, b in bounds.items()}}
    end = {topic: {str(p): b[1] for p, b in bounds.items()}}
    # The JAAS line holds the password. The plan does not show the source's options; where Spark
    # prints options it redacts those whose key or value matches spark.redaction.regex ("password"
    # in the default), and Kafka's client logs sasl.jaas.config as [hidden].
    kafka_options = {f"kafka.{key}": value for key, value in connection.java_client_properties(settings).items()}
    df = (spark.read.format("kafka")
          .options(**kafka_options)
          .option("assign", json.dumps({topic: sorted(bounds)}))
          .option("startingOffsets", json.dumps(start))
          .option("endingOffsets", json.dumps(end))
          .option("kafka.max.partition.fetch.bytes", str(fetch))
          .option("kafka.fetch.max.bytes", str(2 * fetch))
          .option("kafka.receive.buffer.bytes", str(RECEIVE_BUFFER_BYTES))
          .option("minPartitions", str(max(len(bounds), tasks or 0)))
          .load())
    key = F.col("key").cast("string")
    return df.where(key_filter(key)).select("key", "value", "partition", "offset")


@dataclass
class RunMetadata:
    """A run's metadata as the workers keep it: its records on the metadata topic, merged in order."""

    fields: dict[str, Any] = field(default_factory=dict)
    """The run's fields ({} when the topic holds no record of the run)."""
    offsets: list[int] = field(default_factory=list)
    """Offsets of the records merged into fields."""
    rejected: dict[int, str] = field(default_factory=dict)
    """Offset -> why a record of the run was left out (bad_metadata, metadata_conflict, ...)."""


async def _runs_metadata(settings: Settings, runs: Collection[str]) -> dict[str, RunMetadata]:
    topic = settings.metadata_topic
    found = {run: RunMetadata() for run in runs}
    n_partitions = (await partition_counts(settings, [topic])).get(topic)
    if not n_partitions:
        return found  # a broker from before run metadata: no run has any
    consumer = AIOKafkaConsumer(**connection.client_options(settings), enable_auto_commit=False,
                                max_partition_fetch_bytes=settings.max_message_bytes)
    await consumer.start()
    by_key = {run.encode(): run for run in runs}
    try:
        tps = [TopicPartition(topic, p) for p in range(n_partitions)]
        end = await consumer.end_offsets(tps)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        while [tp for tp in tps if await consumer.position(tp) < end[tp]]:
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                for record in records:
                    run = by_key.get(record.key)
                    if run is not None and record.offset < end[TopicPartition(topic, record.partition)]:
                        _merge_record(found[run], run, record.offset, record.value or b"")
    finally:
        await consumer.stop()
    return found


def _merge_record(found: RunMetadata, run: str, offset: int, value: bytes) -> None:
    """The workers' rule (stream/agents.on_run_metadata): a record may add fields, never change one."""
    try:
        recorded_run, fields = run_meta.decode(value)
        if recorded_run != run:
            raise run_meta.MetadataError("key_mismatch", f"key {run!r} but the record is run {recorded_run!r}")
        found.fields = run_meta.merge(found.fields, fields, what=f"run {run}")
        found.offsets.append(offset)
    except QuaxError as exc:
        found.rejected[offset] = str(exc)


def runs_metadata(settings: Settings, runs: Collection[str]) -> dict[str, RunMetadata]:
    """Each run's metadata from the compacted metadata topic (settings.metadata_topic), all runs in
    one read to its end now; records the workers would reject are left out, and logged."""
    found = asyncio.run(_runs_metadata(settings, list(runs)))
    for run, meta in found.items():
        for offset, why in meta.rejected.items():
            log.warning("%s@%d: run %s's metadata record left out (%s)", settings.metadata_topic, offset, run, why)
    return found


def run_metadata(settings: Settings, run: str) -> RunMetadata:
    """The run's metadata (runs_metadata of the one run)."""
    return runs_metadata(settings, [run])[run]
