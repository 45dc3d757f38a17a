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

from . import broker_auth
from .settings import Settings

log = logging.getLogger(__name__)


def topic_plan(settings: Settings) -> dict[str, int]:
    """Topic name -> partition count."""
    return {settings.slices_topic: settings.partitions, settings.spectra_topic: 1,
            f"{settings.slices_topic}.rejected": 1, settings.candidates_topic: 1}


class _RefusalCatcher(logging.Handler):
    """Keeps the reason aiokafka logs when the broker refuses us (bad password, TLS) rather than
    being down: retrying cannot help then."""

    FATAL = ("Authentication", "SSL", "certificate", "UnsupportedSaslMechanism")

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.refusal: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if any(word in message for word in self.FATAL):
            self.refusal = message


async def _connect(settings: Settings, wait_s: float) -> AIOKafkaAdminClient:
    """An admin client, retrying while the broker is still starting (up to wait_s seconds)."""
    deadline = time.monotonic() + wait_s
    client_log = logging.getLogger("aiokafka")
    catcher = _RefusalCatcher()
    client_log.addHandler(catcher)
    client_log.propagate = False  # one line per retry is enough
    try:
        while True:
            admin = AIOKafkaAdminClient(**broker_auth.client_options(settings), request_timeout_ms=30000)
            try:
                await admin.start()
                return admin
            except KafkaConnectionError:
                await admin.close()
                if catcher.refusal:
                    raise RuntimeError(f"the broker at {settings.broker} refused the connection: "
                                       f"{catcher.refusal}") from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no Kafka broker answers at {settings.broker} after {wait_s:.0f} s "
                                       f"(is it up? is security_protocol {settings.security_protocol} "
                                       "what it expects?)") from None
                log.info("waiting for the broker at %s", settings.broker)
                await asyncio.sleep(1.0)
    finally:
        client_log.removeHandler(catcher)
        client_log.propagate = True


async def ensure_topics(settings: Settings, wait_s: float = 90.0) -> dict[str, int]:
    """Create missing topics; raise RuntimeError if one exists with the wrong partition count."""
    plan = topic_plan(settings)
    admin = await _connect(settings, wait_s)
    try:
        existing = await _partition_counts(admin, plan)
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


async def partition_counts(broker: str | Settings, names, wait_s: float = 10.0) -> dict[str, int]:
    """Partition count of each named topic that exists (broker: settings or a plaintext host:port).
    A refused login or TLS handshake, or no broker within wait_s seconds: RuntimeError saying so."""
    settings = broker if isinstance(broker, Settings) else Settings(broker=broker)
    admin = await _connect(settings, wait_s)
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
