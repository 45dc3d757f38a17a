"""librdkafka (confluent-kafka) under asyncio: the producer's Kafka client.

librdkafka batches, retries and acknowledges in its own threads; it reports each message's fate
(its *delivery report*) and connection errors from ``poll()``. Here a thread polls, and each report
is handed to the asyncio loop, where a file's messages are counted down (sender.py). librdkafka
moves the same bytes for a sixth of aiokafka's CPU (docs/performance.md).

Errors: ``SendError`` carries librdkafka's error; ``is_retriable`` says whether waiting for the
broker can cure it. A refused login or a certificate the broker's does not verify against is kept
in ``Refusal`` (librdkafka itself would retry it for ever).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Callable

from confluent_kafka import KafkaError, KafkaException, Producer

from quax_faust import connection
from quax_faust.settings import Settings

log = logging.getLogger(__name__)

NOT_CURED_BY_WAITING = frozenset({
    KafkaError.MSG_SIZE_TOO_LARGE,            # by the broker, or refused before sending
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    KafkaError.SASL_AUTHENTICATION_FAILED,
    KafkaError._AUTHENTICATION,
    KafkaError._INVALID_ARG,
    KafkaError.INVALID_CONFIG,
    KafkaError.INVALID_REQUIRED_ACKS,
    KafkaError.INVALID_RECORD,
})
"""librdkafka error codes that no wait for the broker can cure: the producer stops at once."""

POLL_S = 0.1
"""The polling thread's wait for the next report (s): it wakes as soon as one comes."""


class SendError(RuntimeError):
    """The broker did not take a message, or the client could not reach it: librdkafka's error."""

    def __init__(self, error: KafkaError):
        super().__init__(f"{error.name()}: {error.str()}")
        self.error = error

    @property
    def code(self) -> int:
        return self.error.code()


def is_retriable(exc: BaseException) -> bool:
    """True for Kafka errors that waiting for the broker can cure: a broker down, restarting or
    unreachable, a request or message timed out, a leader moving, a producer fenced off (a new
    client starts afresh). Refused logins, too-large records, missing authorization and anything
    that is not a Kafka error are not."""
    return isinstance(exc, SendError) and exc.code not in NOT_CURED_BY_WAITING


class Refusal:
    """What the broker said when it refused us (login, TLS certificate), from librdkafka's error
    reports: retrying cannot help then. TLS errors that are not a verification failure can be a
    broker going down, and are not refusals."""

    def __init__(self) -> None:
        self.refusal: str | None = None

    def seen(self, error: KafkaError) -> None:
        text = error.str()
        if error.code() in (KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED) or (
                error.code() == KafkaError._SSL and "certificate verify failed" in text.lower()):
            self.refusal = text


def producer_config(settings: Settings) -> dict:
    """librdkafka's producer settings: idempotent, acks from every in-sync replica, batches of
    1 MB (a slice message of 128 slices, 3 MiB, goes alone), each message retried by librdkafka for
    producer_request_timeout_s."""
    timeout_ms = max(1000, round(settings.producer_request_timeout_s * 1000))
    return {
        **connection.librdkafka_config(settings),
        # A key's partition as Kafka's Java client and aiokafka (Faust) choose it, murmur2: not
        # librdkafka's default CRC32, which would put a file's slices in another partition than a
        # re-send from any other client, and its table entry on another worker.
        "partitioner": "murmur2_random",
        "enable.idempotence": True,  # implies acks=all, retries, at most 5 requests in flight, in order
        "acks": "all",
        "linger.ms": 2,
        # Batches as large as the broker takes (16 MiB) cost more, measured at max pace with 3 MiB
        # messages (docs/performance.md): 32-36 core-ms of producer CPU and 63-67 of the broker's
        # per second of data, against 21-22 and 55-56 with librdkafka's default 1 MB.
        "batch.size": 1_000_000,
        "message.max.bytes": settings.max_message_bytes,
        "message.timeout.ms": timeout_ms,  # then the delivery report says _MSG_TIMED_OUT
        "request.timeout.ms": min(30_000, timeout_ms),
        "socket.timeout.ms": min(60_000, max(10_000, timeout_ms)),
    }


class AsyncProducer:
    """A confluent_kafka.Producer polled by a thread; delivery reports reach ``on_delivery`` in the
    asyncio loop that created it. Errors of the connection go to ``refusal`` and the log."""

    def __init__(self, settings: Settings, refusal: Refusal):
        self.settings, self.refusal = settings, refusal
        self.loop = asyncio.get_running_loop()
        self.producer = Producer({**producer_config(settings), "error_cb": self._on_error,
                                  "logger": logging.getLogger("librdkafka")})
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="librdkafka-poll", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.producer.poll(POLL_S)

    def _on_error(self, error: KafkaError) -> None:
        """librdkafka's error callback (in a polling thread): a refusal is kept; the rest (broker
        down, all brokers down) are what the delivery reports will say, and logged at debug level."""
        self.refusal.seen(error)
        if error.fatal():
            log.warning("librdkafka: fatal error %s: %s (the next attempt starts a new client)",
                        error.name(), error.str())
        else:
            log.debug("librdkafka: %s: %s", error.name(), error.str())

    async def produce(self, topic: str, value: bytes, key: bytes,
                      on_delivery: Callable[[KafkaError | None], None]) -> None:
        """Queue one message; ``on_delivery(error or None)`` runs in the loop once the broker acked
        it or librdkafka gave up. Waits while librdkafka's queue is full; SendError if refused."""
        loop = self.loop

        def report(error: KafkaError | None, _message) -> None:  # in the polling thread
            try:
                loop.call_soon_threadsafe(on_delivery, error)
            except RuntimeError:  # the loop is closed: nobody waits for this file any more
                pass

        while True:
            try:
                self.producer.produce(topic, value, key, on_delivery=report)
                return
            except BufferError:  # queue.buffering.max.*: let the broker take some first
                await asyncio.sleep(0.005)
            except KafkaException as exc:
                raise SendError(exc.args[0]) from None

    async def send_and_wait(self, topic: str, value: bytes, key: bytes) -> None:
        """Send one message and return once the broker acked it; SendError if it did not."""
        acked = self.loop.create_future()

        def delivered(error: KafkaError | None) -> None:
            if not acked.done():
                acked.set_exception(SendError(error)) if error is not None else acked.set_result(None)

        await self.produce(topic, value, key, delivered)
        await acked

    async def reachable(self, topic: str, timeout_s: float) -> None:
        """Return once the broker answers a metadata request for topic; SendError after timeout_s,
        or at once when it refused us (self.refusal)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                await self.loop.run_in_executor(None, lambda: self.producer.list_topics(topic, timeout=0.5))
                return
            except KafkaException as exc:
                if self.refusal.refusal or time.monotonic() > deadline:
                    raise SendError(exc.args[0]) from None

    async def close(self, flush_s: float) -> int:
        """Wait up to flush_s seconds for the messages still queued, then drop the rest (their
        delivery reports say _PURGE_QUEUE or _PURGE_INFLIGHT). Returns how many were dropped."""
        self._stop.set()
        await self.loop.run_in_executor(None, self._thread.join)
        left = await self.loop.run_in_executor(None, self.producer.flush, flush_s) if flush_s > 0 else len(self.producer)
        if left:
            self.producer.purge(in_queue=True, in_flight=True)
            await self.loop.run_in_executor(None, self.producer.flush, 1.0)  # serve their reports now
        return left
