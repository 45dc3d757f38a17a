"""Create the topics the producer and workers need, with the right partition counts.

Faust creates only its own changelog topics; ``slices`` and ``spectra`` are ours. A topic that exists
with another partition count is an error (a file's slices would not land where its table lives).
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka.admin import NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from quax_faust.connection import connect_admin, existing_partition_counts
from quax_faust.settings import Settings

log = logging.getLogger(__name__)


def topic_plan(settings: Settings) -> dict[str, int]:
    """Topic name -> partition count."""
    return {settings.slices_topic: settings.partitions, settings.spectra_topic: 1,
            f"{settings.slices_topic}.rejected": 1, settings.candidates_topic: 1}


async def ensure_topics(settings: Settings, wait_s: float = 90.0) -> dict[str, int]:
    """Create missing topics; raise RuntimeError if one exists with the wrong partition count."""
    plan = topic_plan(settings)
    admin = await connect_admin(settings, wait_s)
    try:
        existing = await existing_partition_counts(admin, plan)
        missing = [NewTopic(name, n, settings.replication_factor,
                            topic_configs={"max.message.bytes": str(settings.max_message_bytes)})
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
            existing = await existing_partition_counts(admin, plan)
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
