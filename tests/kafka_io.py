"""Small helpers for tests: read a whole topic, send a raw record, wait for records."""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from quax_faust.connection import partition_counts


async def read_topic_async(bootstrap: str, topic: str, max_bytes: int = 16 << 20) -> list:
    """Every record of a topic, from the beginning to its end offsets when called."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest", max_partition_fetch_bytes=max_bytes)
    await consumer.start()
    try:
        n_partitions = (await partition_counts(bootstrap, [topic])).get(topic, 0)
        if not n_partitions:
            return []
        tps = [TopicPartition(topic, p) for p in range(n_partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        records = []
        while any([await consumer.position(tp) < end[tp] for tp in tps]):
            for msgs in (await consumer.getmany(timeout_ms=1000)).values():
                records += msgs
        return records
    finally:
        await consumer.stop()


def read_topic(bootstrap: str, topic: str) -> list:
    return asyncio.run(read_topic_async(bootstrap, topic))


def wait_records(bootstrap: str, topic: str, n: int, timeout_s: float = 60.0) -> list:
    """Poll until the topic holds at least n records (returns what it has at the timeout)."""
    deadline = time.monotonic() + timeout_s
    while True:
        records = read_topic(bootstrap, topic)
        if len(records) >= n or time.monotonic() > deadline:
            return records
        time.sleep(0.5)


async def send_raw_async(bootstrap: str, topic: str, key: bytes | None, value: bytes) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=16 << 20)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()
