"""What the workers have really done, for tests that must wait for it instead of sleeping: the
consumer group's committed offsets (the first offset no agent has processed, faust_fixes.py) and the
workers' Prometheus counters."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections import Counter

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client.parser import text_string_to_metric_families

from quax_faust.settings import Settings
from quax_faust.connection import partition_counts


async def unprocessed_async(settings: Settings) -> dict[str, tuple[int, int]]:
    """The agents' source partitions (slices, spectra, run metadata) whose committed offset is
    below the end offset: {"topic/partition": (committed, end)}; empty once every message there
    was processed."""
    topics = [settings.slices_topic, settings.spectra_topic, settings.metadata_topic]
    counts = await partition_counts(settings.broker, topics)
    tps = [TopicPartition(t, p) for t in topics for p in range(counts.get(t, 0))]
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.broker)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.broker, enable_auto_commit=False)
    await admin.start()
    await consumer.start()
    try:
        ends = await consumer.end_offsets(tps)  # first: a commit seen later may only be newer
        committed = await admin.list_consumer_group_offsets(settings.app_id)
    finally:
        await consumer.stop()
        await admin.close()
    behind = {}
    for tp in tps:
        done = committed[tp].offset if tp in committed and committed[tp].offset >= 0 else 0
        if done < ends[tp]:
            behind[f"{tp.topic}/{tp.partition}"] = (done, ends[tp])
    return behind


def wait_processed(settings: Settings, timeout_s: float = 120.0) -> None:
    """Wait until the workers committed, in every partition of slices, spectra and run metadata,
    the end offset: every message sent before (and every spectrum made from them) was processed."""
    deadline = time.monotonic() + timeout_s
    while behind := asyncio.run(unprocessed_async(settings)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"not processed within {timeout_s} s (committed, end): {behind}")
        time.sleep(0.5)


async def group_state_async(settings: Settings) -> tuple[str, int]:
    """The consumer group's state ('Stable', 'PreparingRebalance', ...) and its number of members."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.broker)
    await admin.start()
    try:
        (response,) = await admin.describe_consumer_groups([settings.app_id])
    finally:
        await admin.close()
    group = response.to_object()["groups"][0]
    return group["state"], len(group["members"])


def wait_settled(settings: Settings, workers, timeout_s: float = 120.0) -> None:
    """Wait until the group is Stable with every running worker in it, each holding slices
    partitions of its own: no rebalance is pending, so nothing processed will be redelivered."""
    deadline = time.monotonic() + timeout_s
    want = {f"{settings.slices_topic}/{p}" for p in range(settings.partitions)}
    while True:
        state = asyncio.run(group_state_async(settings))
        assigned = [{tp for tp in (workers.health(k) or {}).get("assigned", []) if tp in want}
                    for k in workers.procs]
        if (state == ("Stable", len(workers.procs)) and all(assigned)
                and sum(map(len, assigned)) == len(want) and set().union(*assigned) == want):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"group not settled within {timeout_s} s: {state}, assigned {assigned}")
        time.sleep(0.5)


def worker_counters(settings: Settings) -> Counter:
    """The quax_* counters of all workers, summed: {(sample name, ((label, value), ...)): value}."""
    total = Counter()
    for url in settings.worker_urls:
        with urllib.request.urlopen(url + "/metrics", timeout=10) as answer:
            text = answer.read().decode()
        for family in text_string_to_metric_families(text):
            if family.type == "counter" and family.name.startswith("quax_"):
                for sample in family.samples:
                    if sample.name.endswith("_total"):
                        total[(sample.name, tuple(sorted(sample.labels.items())))] += sample.value
    return total


def counter(counters: Counter, name: str, **labels: str) -> float:
    return counters[(name, tuple(sorted(labels.items())))]
