"""The run's metadata record on the metadata topic: read what is recorded, merge what this
producer was given, refuse a conflict before anything is sent, write the merged record.

The topic has one partition and is compacted: its last record for a run (key = run id) is the
run's metadata (core/run_meta.py). The producer is the only writer; the workers keep a table of it.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition

from quax_faust import connection
from quax_faust.core import run_meta
from quax_faust.ingest.rdkafka import AsyncProducer
from quax_faust.settings import Settings

log = logging.getLogger(__name__)


async def recorded_metadata(settings: Settings, run: str) -> dict[str, Any]:
    """The run's recorded fields ({} if none): the topic's last record with key ``run``."""
    consumer = AIOKafkaConsumer(**connection.client_options(settings), enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        tp = TopicPartition(settings.metadata_topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        fields: dict[str, Any] = {}
        key = run.encode()
        while await consumer.position(tp) < end:
            for record in (await consumer.getmany(tp, timeout_ms=1000)).get(tp, []):
                if record.key == key and record.value is not None:
                    fields = run_meta.decode(record.value)[1]
        return fields
    finally:
        await consumer.stop()


async def record_run_metadata(settings: Settings, run: str, given: Mapping[str, Any],
                              producer: AsyncProducer) -> dict[str, Any]:
    """Merge ``given`` into the run's recorded metadata and write the result (with ``producer``,
    the run's own Kafka client, awaiting the broker's ack) if it grew.
    MetadataError ``metadata_conflict`` (nothing written) if a given value contradicts a recorded
    one; a run with no LO recorded or given gets settings.lo_frequency_hz. Returns the run's
    metadata after the merge."""
    recorded = await recorded_metadata(settings, run)
    merged = run_meta.merge(recorded, given, what=f"run {run}")
    merged.setdefault("lo_frequency_hz", settings.lo_frequency_hz)
    if merged != recorded:
        await producer.send_and_wait(settings.metadata_topic, run_meta.encode(run, merged), run.encode())
        added = sorted(set(merged) - set(recorded))
        log.info("run %s metadata recorded: %s", run, ", ".join(f"{k}={merged[k]!r}" for k in added))
    return merged
