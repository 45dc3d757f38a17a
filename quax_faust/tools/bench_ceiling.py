"""The box's own ceiling, measured by `quax bench` on the same broker before the chain runs: how
many MB/s librdkafka (the producer's client) puts into a topic, and how many MB/s aiokafka (the
Faust workers' client) reads back, for messages of the chain's size. The chain's MB/s is then
quoted as a fraction of the smaller of the two: a ratio that compares across boxes, where an
absolute time does not (docs/performance.md).
"""

from __future__ import annotations

import asyncio
import os
import time

import numpy as np
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import NewTopic
from confluent_kafka import Producer

from quax_faust import connection, fetch_reads, record_crc
from quax_faust.core import wire
from quax_faust.ingest.rdkafka import producer_config
from quax_faust.settings import Settings
from quax_faust.stream import malloc

TOPIC = "quax-bench-ceiling"


def message_bytes(settings: Settings) -> int:
    """Size of one slice message of the chain (slices_per_message whole slices and the header)."""
    one = wire.SliceBatch("bench-max", 0, 0, 1, 0, settings.sample_rate_hz, 0.0,
                          np.zeros((1, settings.slice_len), np.complex64))
    return len(wire.encode_slice_batch(one)) + (settings.slices_per_message - 1) * settings.slice_len * 8


def ceiling_phase(settings: Settings, total_mb: float) -> dict:
    """Produce-only (librdkafka) then consume-only (aiokafka) of ~total_mb MB in chain-sized
    messages on a topic of its own (settings.partitions partitions), deleted afterwards. Each side
    is timed in its steady state, as the chain's figure is (after its first 10 % of files): the
    first 10 % of the messages (``warmup``) go through untimed, so that the producer's connection
    and idempotence id (retried while the new broker loads its coordinator) and the broker's JIT
    are not in the rate."""
    size = message_bytes(settings)
    n = max(8, round(total_mb * 1e6 / size))
    warmup = max(1, n // 10)
    asyncio.run(create_topic(settings))
    try:
        produced = produce_only(settings, n, size, warmup)
        consumed = asyncio.run(consume_only(settings, n, produced.pop("timed_from")))
    finally:
        asyncio.run(delete_topic(settings))
    return {"message_bytes": size, "messages": n, "warmup_messages": warmup, "produce": produced,
            "consume": consumed, "ceiling_mb_per_s": min(produced["mb_per_s"], consumed["mb_per_s"])}


def produce_only(settings: Settings, n: int, size: int, warmup: int = 0) -> dict:
    """``warmup`` then n messages of size bytes through librdkafka with the producer's own
    settings, as fast as it takes them; MB/s of the n from their first produce to the last ack
    (the warm-up acked before), and this process's CPU meanwhile."""
    value = os.urandom(size)
    failed: list[str] = []
    warmed: dict[int, int] = {}  # partition: the warm-up messages acked there (a new topic: offsets from 0)

    def report(error, message) -> None:
        if error is not None:
            failed.append(error.str())
        elif int(message.key()) < warmup:
            warmed[message.partition()] = warmed.get(message.partition(), 0) + 1

    producer = Producer(producer_config(settings))
    left = send_numbered(producer, TOPIC, range(warmup), value, report)
    cpu0, t0 = time.process_time(), time.perf_counter()
    left += send_numbered(producer, TOPIC, range(warmup, warmup + n), value, report)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    if left or failed:
        raise RuntimeError(f"ceiling: {left} messages not acked, {len(failed)} failed: {failed[:3]}")
    return {**_rates(n * size, wall, cpu), "timed_from": warmed}


def send_numbered(producer: Producer, topic: str, keys: range, value: bytes, report,
                  partitions: int | None = None) -> int:
    """Produce value once per k in keys, keyed str(k) (to partition k % partitions if given, else
    the producer's partitioner), waiting whenever librdkafka's queue is full; then flush. Returns
    how many messages were still unacked after 120 s."""
    for k in keys:
        where = {} if partitions is None else {"partition": k % partitions}
        while True:
            try:
                producer.produce(topic, value, str(k).encode(), on_delivery=report, **where)
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    return producer.flush(120)


def workers_consumer(settings: Settings) -> AIOKafkaConsumer:
    """An aiokafka consumer (not started, no group) that reads as the workers' do: their fetch
    sizes (max_message_bytes), socket reads (fetch_reads), heap (freed fetch buffers reused, not
    mapped afresh) and CRC check (record_crc). The socket reads and the heap are set for this
    whole process."""
    fetch_reads.install()
    malloc.keep_freed_memory()
    return AIOKafkaConsumer(**connection.client_options(settings), enable_auto_commit=False,
                            max_partition_fetch_bytes=settings.max_message_bytes,
                            fetch_max_bytes=4 * settings.max_message_bytes,
                            **record_crc.consumer_options())


async def consume_only(settings: Settings, n: int, timed_from: dict[int, int] | None = None) -> dict:
    """Read n messages back with one aiokafka consumer set up as the workers' (fetch sizes of
    max_message_bytes, their socket reads and heap), each partition from offset ``timed_from``
    (after the producer's warm-up; default 0), after a warm-up read of those first offsets; MB/s
    and this process's CPU over the n."""
    consumer = workers_consumer(settings)
    await consumer.start()
    try:
        tps = [TopicPartition(TOPIC, p) for p in range(settings.partitions)]
        consumer.assign(tps)
        timed_from = timed_from or {}
        warmup = {tp: timed_from.get(tp.partition, 0) for tp in tps}
        for tp, end in warmup.items():  # the warm-up: read untimed, as far as the timed offsets
            consumer.seek(tp, 0)
            while end and await consumer.position(tp) < end:
                await consumer.getmany(tp, timeout_ms=1000, max_records=end - await consumer.position(tp))
        for tp, start in warmup.items():
            consumer.seek(tp, start)
        seen = n_bytes = 0
        keys: set[int] = set()  # the messages read, by the producer's numbering
        cpu0, t0 = time.process_time(), time.perf_counter()
        while seen < n:
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                seen += len(records)
                n_bytes += sum(len(r.value) for r in records)
                keys.update(int(r.key) for r in records)
        rates = _rates(n_bytes, time.perf_counter() - t0, time.process_time() - cpu0)
        return {**rates, "keys": [min(keys), max(keys), len(keys)]}
    finally:
        await consumer.stop()


def _rates(n_bytes: int, wall_s: float, cpu_s: float) -> dict:
    mb = n_bytes / 1e6
    return {"mb": round(mb, 1), "wall_s": round(wall_s, 3), "mb_per_s": round(mb / wall_s, 1),
            "cpu_cores": round(cpu_s / wall_s, 3), "core_ms_per_mb": round(1000 * cpu_s / mb, 2)}


async def create_topic(settings: Settings, topic: str = TOPIC) -> None:
    """A topic of settings.partitions partitions that takes the chain's largest messages."""
    admin = await connection.connect_admin(settings, 30.0)
    try:
        await admin.create_topics([NewTopic(topic, settings.partitions, settings.replication_factor,
                                            topic_configs={"max.message.bytes": str(settings.max_message_bytes)})])
    finally:
        await admin.close()


async def delete_topic(settings: Settings, topic: str = TOPIC) -> None:
    admin = await connection.connect_admin(settings, 30.0)
    try:
        await admin.delete_topics([topic])
    finally:
        await admin.close()
