"""Create the topics the producer and workers need, with the right partition counts.

Faust creates only its own changelog topics; ``slices`` and ``spectra`` are ours. A topic that exists
with another partition count is an error (a file's slices would not land where its table lives).
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError

from .settings import Settings

log = logging.getLogger(__name__)


def topic_plan(settings: Settings) -> dict[str, int]:
    """Topic name -> partition count."""
    return {settings.slices_topic: settings.partitions, settings.spectra_topic: 1,
            f"{settings.slices_topic}.rejected": 1, settings.candidates_topic: 1}


async def _connect(bootstrap: str, wait_s: float) -> AIOKafkaAdminClient:
    """An admin client, retrying while the broker is still starting (up to wait_s seconds)."""
    deadline = time.monotonic() + wait_s
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # one line per retry is enough
    try:
        return await _retry_connect(bootstrap, deadline, wait_s)
    finally:
        logging.getLogger("aiokafka").setLevel(logging.NOTSET)


async def _retry_connect(bootstrap: str, deadline: float, wait_s: float) -> AIOKafkaAdminClient:
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30000)
        try:
            await admin.start()
            return admin
        except KafkaConnectionError:
            await admin.close()
            if time.monotonic() > deadline:
                raise RuntimeError(f"no Kafka broker answers at {bootstrap} after {wait_s:.0f} s") from None
            log.info("waiting for the broker at %s", bootstrap)
            await asyncio.sleep(1.0)


async def ensure_topics(settings: Settings, wait_s: float = 90.0) -> dict[str, int]:
    """Create missing topics; raise RuntimeError if one exists with the wrong partition count."""
    plan = topic_plan(settings)
    admin = await _connect(settings.broker, wait_s)
    try:
        existing = await _partition_counts(admin, plan)
        missing = [NewTopic(name, n, 1, topic_configs={"max.message.bytes": str(settings.max_message_bytes)})
                   for name, n in plan.items() if name not in existing]
        if missing:
            try:
                await admin.create_topics(missing)
                log.info("created topics %s", ", ".join(t.name for t in missing))
            except TopicAlreadyExistsError:
                pass  # another process created it first
        # A new topic's metadata takes a moment to show everywhere (another worker may have just
        # created it): wait for every planned topic to be described.
        deadline = time.monotonic() + 30
        while True:
            existing = await _partition_counts(admin, plan)
            if set(plan) <= set(existing) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
    finally:
        await admin.close()
    for name, n in plan.items():
        if existing.get(name) != n:
            raise RuntimeError(f"topic {name!r} has {existing.get(name)} partitions, expected {n}; "
                               "delete it or change QUAX_PARTITIONS")
    return existing


async def partition_counts(bootstrap: str, names) -> dict[str, int]:
    """Partition count of each named topic that exists."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return await _partition_counts(admin, names)
    finally:
        await admin.close()


async def _partition_counts(admin: AIOKafkaAdminClient, names) -> dict[str, int]:
    listed = set(await admin.list_topics())
    wanted = [n for n in names if n in listed]
    if not wanted:
        return {}
    described = await admin.describe_topics(wanted)
    return {t["topic"]: len(t["partitions"]) for t in described
            if not t.get("error_code") and t.get("partitions")}
