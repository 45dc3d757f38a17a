"""The box's pass-through ceiling, measured by `quax bench` beside the produce-only and consume-only
ones (bench_ceiling.py): librdkafka producing and one aiokafka consumer per partition, each in its
own process as the workers are, reading at the same time on the same broker, with nothing done to
the bytes. It is the chain without Faust, the decode, the FFT and the tables: what the transport
alone reaches when the broker's write and read paths and both clients share the box's cores.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import queue
import time

from aiokafka import TopicPartition
from confluent_kafka import Producer

from quax_faust.ingest.rdkafka import producer_config
from quax_faust.settings import Settings
from quax_faust.tools import bench_ceiling
from quax_faust.tools.bench_stack import system_busy_s

TOPIC = "quax-bench-passthrough"


def passthrough_phase(settings: Settings, total_mb: float, timeout_s: float = 600.0) -> dict:
    """~total_mb MB in chain-sized messages, message k to partition k % partitions, through
    librdkafka while settings.partitions consumer processes read them. The first 10 % go through
    untimed (connections, idempotence id, JIT); the timed window runs from the first timed produce
    to the moment the last consumer has read its last message. MB/s over that window, the box's
    busy cores meanwhile (/proc/stat), and each side's CPU."""
    size = bench_ceiling.message_bytes(settings)
    parts = settings.partitions
    n = max(parts, round(total_mb * 1e6 / size))
    warmup = max(parts, n // 10)
    asyncio.run(bench_ceiling.create_topic(settings, TOPIC))
    ctx = multiprocessing.get_context("spawn")
    reports = ctx.Queue()
    readers = [ctx.Process(target=_read_partition, name=f"passthrough-reader-{p}", daemon=True,
                           args=(settings, p, _count(warmup, parts, p), _count(warmup + n, parts, p), reports))
               for p in range(parts)]
    try:
        for reader in readers:
            reader.start()
        for _ in readers:
            _next_report(reports, "ready", 120.0)
        produced = _produce(settings, warmup, n, size, parts)
        done = [_next_report(reports, "done", timeout_s) for _ in readers]
    finally:
        for reader in readers:
            reader.join(5)
            if reader.is_alive():
                reader.kill()
        asyncio.run(bench_ceiling.delete_topic(settings, TOPIC))
    t0, t1 = produced["timed_from_s"], max(d["last_s"] for d in done)
    wall = t1 - t0
    mb = sum(d["bytes"] for d in done) / 1e6
    return {"message_bytes": size, "messages": n, "warmup_messages": warmup, "mb": round(mb, 1),
            "wall_s": round(wall, 3), "mb_per_s": round(mb / wall, 1),
            "box_busy_cores": round(produced["box_busy_s"] / produced["wall_s"], 3),
            "producer_cores": round(produced["cpu_s"] / wall, 3),
            "consumer_cores": round(sum(d["cpu_s"] for d in done) / wall, 3),
            "producer_mb_per_s": round(n * size / 1e6 / produced["wall_s"], 1),
            "keys": [min(d["keys"][0] for d in done), max(d["keys"][1] for d in done),
                     sum(d["keys"][2] for d in done)]}


def _count(total: int, parts: int, p: int) -> int:
    """How many of messages 0..total-1 go to partition p (message k to k % parts)."""
    return total // parts + (1 if p < total % parts else 0)


def _next_report(reports, kind: str, timeout_s: float) -> dict:
    """The next reader's report, which must be of this kind; RuntimeError otherwise or after timeout_s."""
    try:
        report = reports.get(timeout=timeout_s)
    except queue.Empty:
        raise RuntimeError(f"pass-through: a reader was not {kind} after {timeout_s:.0f} s") from None
    if report.get("kind") != kind:
        raise RuntimeError(f"pass-through reader: {report}")
    return report


def _produce(settings: Settings, warmup: int, n: int, size: int, parts: int) -> dict:
    value = os.urandom(size)
    failed: list[str] = []

    def report(error, _message) -> None:
        if error is not None:
            failed.append(error.str())

    producer = Producer(producer_config(settings))
    left = bench_ceiling.send_numbered(producer, TOPIC, range(warmup), value, report, parts)
    busy0, cpu0, t0 = system_busy_s(), time.process_time(), time.time()
    left += bench_ceiling.send_numbered(producer, TOPIC, range(warmup, warmup + n), value, report, parts)
    wall, cpu = time.time() - t0, time.process_time() - cpu0
    if left or failed:
        raise RuntimeError(f"pass-through: {left} messages not acked, {len(failed)} failed: {failed[:3]}")
    # The readers finish after the last ack, but by then only their last fetch is left: the box's
    # busy time is taken over the producer's window, the one where both sides run.
    return {"timed_from_s": t0, "wall_s": wall, "cpu_s": cpu, "box_busy_s": system_busy_s() - busy0}


def _read_partition(settings: Settings, partition: int, warm: int, total: int, reports) -> None:
    """Process body: read partition from offset 0 with the workers' consumer setup until `total`
    messages; report when ready, then the wall time of the last message and the CPU spent after
    the first `warm` messages."""
    try:
        asyncio.run(_read(settings, partition, warm, total, reports))
    except BaseException as e:  # the parent waits on the queue: tell it, do not leave it hanging
        reports.put({"kind": "error", "partition": partition, "error": repr(e)})
        raise


async def _read(settings: Settings, partition: int, warm: int, total: int, reports) -> None:
    consumer = bench_ceiling.workers_consumer(settings)
    await consumer.start()
    try:
        tp = TopicPartition(TOPIC, partition)
        consumer.assign([tp])
        consumer.seek(tp, 0)
        reports.put({"kind": "ready", "partition": partition})
        seen = n_bytes = 0
        keys: list[int] = []  # the timed messages read, by the producer's numbering
        cpu0 = None
        while seen < total:
            for records in (await consumer.getmany(tp, timeout_ms=1000)).values():
                for r in records:
                    seen += 1
                    if seen > warm:
                        n_bytes += len(r.value)
                        keys.append(int(r.key))
                if cpu0 is None and seen >= warm:
                    cpu0 = time.process_time()
        reports.put({"kind": "done", "partition": partition, "last_s": time.time(), "bytes": n_bytes,
                     "keys": [min(keys, default=-1), max(keys, default=-1), len(keys)],
                     "cpu_s": time.process_time() - (cpu0 or 0.0)})
    finally:
        await consumer.stop()
