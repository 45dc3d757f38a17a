"""Sending files to the ``slices`` topic, and riding out a broker that is away.

A Kafka producer sends each file as messages of ``slices_per_message`` consecutive whole slices,
keyed ``run/file`` so a file stays in one partition. A file counts as sent (report, metrics,
checkpoint) only once the broker acked all its messages.

When the broker is away (down, restarting, unreachable) the producer waits for it, for ever: the
files in flight are re-sent on a new Kafka client after a backoff of 1 s doubling to 30 s, with a
warning each attempt. Errors that waiting cannot cure (refused login, record too large, topic not
authorized) stop it at once with a RuntimeError.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import deque
from datetime import datetime
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
from aiokafka import AIOKafkaProducer
from aiokafka.errors import (BrokerNotAvailableError, KafkaError, KafkaTimeoutError,
                             MessageSizeTooLargeError, RecordTooLargeError)

from quax_faust import connection
from quax_faust.stream import malloc, metrics

from quax_faust.core import daq, wire
from quax_faust.settings import Settings
from quax_faust.connection import RefusalCatcher
from quax_faust.stream.topics import ensure_topics
from quax_faust.ingest.feed import Checkpoint, quarantine

log = logging.getLogger(__name__)


def batches_of_file(run: str, file_index: int, samples, settings: Settings,
                    acquired_at_s: float = wire.UNKNOWN_TIME) -> Iterator[wire.SliceBatch]:
    """The file's whole slices in messages of settings.slices_per_message (produced_at_s set later),
    each with the file's acquisition time (Unix s, NaN if unknown)."""
    layout = daq.SliceLayout(samples.shape[0], settings.slice_len)
    slices = daq.whole_slices(samples, settings.slice_len)
    for first in range(0, layout.n_slices, settings.slices_per_message):
        yield wire.SliceBatch(run, file_index, first, layout.n_slices, layout.tail_samples, settings.sample_rate_hz,
                              0.0, slices[first:first + settings.slices_per_message], acquired_at_s)


def backoff_s(attempt: int, first_s: float = 1.0, cap_s: float = 30.0) -> float:
    """Wait before attempt 1, 2, 3, ... to reach the broker again: first_s doubling up to cap_s (s)."""
    return min(cap_s, first_s * 2.0 ** min(attempt - 1, 32))


def is_retriable(exc: BaseException) -> bool:
    """True for Kafka errors that waiting for the broker can cure.

    aiokafka marks connection errors, request timeouts, unknown or leaderless partitions and the like
    ``retriable``; its KafkaTimeoutError (no answer or no room in a batch within the request timeout)
    is not marked but means the same. Refused logins, too-large records and missing authorization
    are not retriable.
    """
    return isinstance(exc, KafkaError) and (exc.retriable or isinstance(exc, (KafkaTimeoutError,
                                                                              BrokerNotAvailableError)))


class _LoginRefusal(RefusalCatcher):
    """The reason aiokafka logs when the broker refuses our login (it then raises a plain, retriable
    KafkaConnectionError). Narrower than at start-up: TLS errors can be a broker going down."""

    FATAL = ("Authentication", "UnsupportedSaslMechanism", "CERTIFICATE_VERIFY_FAILED")


class DaqProducer:
    """A Kafka producer sending file pairs as slice messages; ``restart`` gives it a new client."""

    def __init__(self, settings: Settings):
        self.settings = settings
        malloc.keep_freed_memory()  # reuse the big buffers of each file (quax_faust/stream/malloc.py)
        self.producer = self._client()
        self.refusal = _LoginRefusal()

    def _client(self) -> AIOKafkaProducer:
        settings = self.settings
        return AIOKafkaProducer(
            **connection.client_options(settings), max_request_size=settings.max_message_bytes,
            acks="all", linger_ms=2, request_timeout_ms=round(settings.producer_request_timeout_s * 1000),
            # Not idempotent: an idempotent aiokafka producer retries a batch for ever while the
            # broker is away and its stop() waits for it (aio-libs/aiokafka#1101), and after an
            # outage it can be stuck on OutOfOrderSequenceNumber (#1017). Here every batch fails
            # within the request timeout and the whole file is re-sent; duplicates are harmless.
            enable_idempotence=False,
            # aiokafka keeps one request in flight per broker and one batch per partition: batches
            # as large as the broker takes let the messages queued meanwhile go in the next request
            # (with 1 MiB, each 3 MiB message was a request of its own: docs/performance.md).
            max_batch_size=settings.max_message_bytes)

    async def __aenter__(self) -> "DaqProducer":
        await ensure_topics(self.settings)
        logging.getLogger("aiokafka").addHandler(self.refusal)
        await self.producer.start()
        return self

    async def __aexit__(self, *exc) -> None:
        try:
            await self.producer.stop()
        finally:
            logging.getLogger("aiokafka").removeHandler(self.refusal)

    async def restart(self, pause_s: float) -> None:
        """Drop the Kafka client, wait pause_s seconds, start a new one (KafkaError if the broker
        does not answer). A client that failed may keep stale connections and metadata."""
        try:
            await self.producer.stop()  # its batches fail within the request timeout
        except KafkaError as exc:
            log.debug("stopping the old Kafka client: %r", exc)
        await asyncio.sleep(pause_s)
        self.producer = self._client()
        self.refusal.refusal = None
        await self.producer.start()

    async def send_file(self, run: str, file_index: int, samples,
                        acquired_at_s: float = wire.UNKNOWN_TIME) -> tuple[int, int, int]:
        """Send one file's whole slices; returns (slices, messages, bytes) once the broker acked all."""
        return await (await self.queue_file(run, file_index, samples, acquired_at_s))

    async def queue_file(self, run: str, file_index: int, samples,
                         acquired_at_s: float = wire.UNKNOWN_TIME) -> asyncio.Future:
        """Hand one file's messages (acquired at acquired_at_s, Unix s; NaN unknown) to the Kafka
        client; the returned future gives (slices, messages, bytes) once the broker acked them all."""
        key = wire.file_key(run, file_index)
        pending, n_slices, n_bytes = [], 0, 0
        started = time.perf_counter()
        for batch in batches_of_file(run, file_index, samples, self.settings, acquired_at_s):
            value = wire.encode_slice_batch(dataclasses.replace(batch, produced_at_s=time.time()))
            message = await self.producer.send(self.settings.slices_topic, value, key=key)
            message.add_done_callback(_consume_error)  # if the file fails half-sent, no one awaits it
            pending.append(message)
            n_slices += batch.slice_count
            n_bytes += len(value)

        async def acked() -> tuple[int, int, int]:
            await asyncio.gather(*pending)
            metrics.PRODUCER_SEND_SECONDS.observe(time.perf_counter() - started)
            return n_slices, len(pending), n_bytes

        future = asyncio.ensure_future(acked())
        future.add_done_callback(_consume_error)  # a file re-sent after an outage is not awaited
        return future


def _consume_error(future: asyncio.Future) -> None:
    """Mark a failure as seen: an outage fails futures that a re-send replaces (no asyncio warning)."""
    if not future.cancelled():
        future.exception()


@dataclass
class ProduceReport:
    """What a run sent (acked files, slices, messages, bytes of wire format, seconds of data) and
    skipped; wall_seconds since it started (s)."""

    files_sent: int = 0
    slices_sent: int = 0
    messages_sent: int = 0
    bytes_sent: int = 0
    tail_samples_dropped: int = 0
    data_seconds: float = 0.0
    wall_seconds: float = 0.0
    skipped: list[str] = field(default_factory=list)
    already_sent: int = 0

    @property
    def realtime_factor(self) -> float:
        return self.data_seconds / self.wall_seconds if self.wall_seconds > 0 else float("nan")


@dataclass
class _FileInFlight:
    """A file handed to the Kafka client; its samples are kept until it is acked, to re-send it."""

    file_index: int
    samples: np.ndarray
    acked: asyncio.Future | None = None
    """Gives (slices, messages, bytes) once the broker acked every message; None: not queued yet."""
    acquired_at_s: float = wire.UNKNOWN_TIME

    @property
    def needs_sending(self) -> bool:
        """Not queued yet, or its acks failed or are still awaited (from a client now dropped)."""
        acked = self.acked
        return acked is None or not acked.done() or acked.cancelled() or acked.exception() is not None


@dataclass
class _Outage:
    """The broker not taking our files: since when, and how many attempts so far."""

    since: float | None = None
    """time.time() of the first failure, None while files are being acked."""
    attempts: int = 0

    def blocked_s(self) -> float:
        return 0.0 if self.since is None else time.time() - self.since

    def over(self) -> None:
        if self.since is not None:
            log.info("broker back: files acked again after %.0f s and %d attempts", self.blocked_s(),
                     self.attempts)
        self.since, self.attempts = None, 0


@dataclass
class _Sending:
    """One run being sent: pacing, files in flight, and what happens when the broker acks a file.

    Up to ``files_in_flight`` files are queued in the Kafka client before the oldest one's acks are
    awaited, so the next file is read and queued while the broker stores the previous one; a file
    counts as sent (report, metrics, checkpoint) only once all its messages are acked. If the
    broker fails to take them (a retriable error), the files in flight are re-sent in order on a new
    client after a growing backoff, for as long as it takes.
    """

    producer: DaqProducer
    settings: Settings
    run: str
    speed: float
    started: float
    report: ProduceReport
    quarantine_dir: Path
    progress: bool
    checkpoint: Checkpoint
    files_in_flight: int
    queued_data_s: float = 0.0
    in_flight: deque[_FileInFlight] = field(default_factory=deque)
    outage: _Outage = field(default_factory=_Outage)

    def __post_init__(self) -> None:
        metrics.PRODUCER_BLOCKED_SECONDS.set_function(self.outage.blocked_s)

    async def send_pair(self, pair: daq.FilePair, file_index: int, reading: asyncio.Future) -> bool:
        """Send one pair (paced) once read (reading gives a feed.DaqFile); quarantine it if bad.
        True if it was queued."""
        try:
            read = await reading
        except daq.DaqError as exc:
            quarantine([pair.i_path, pair.q_path], str(exc), self.quarantine_dir)
            self.report.skipped.append(str(exc))
            metrics.PRODUCER_SKIPPED.labels(reason=exc.reason).inc()
            return False
        # Real time: the DAQ finishes writing a file one file-duration after the previous one.
        delay = self.started + self.queued_data_s / self.speed - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        file = _FileInFlight(file_index, read.samples, acquired_at_s=read.acquired_at_s)
        self.queued_data_s += file.samples.shape[0] / self.settings.sample_rate_hz
        self.in_flight.append(file)
        try:
            file.acked = await self.producer.queue_file(self.run, file_index, file.samples, file.acquired_at_s)
        except Exception as exc:
            await self._ride_out(exc)
        while len(self.in_flight) >= max(1, self.files_in_flight):
            await self._finish_oldest()
        return True

    async def drain(self) -> None:
        while self.in_flight:
            await self._finish_oldest()

    async def _finish_oldest(self) -> None:
        oldest = self.in_flight[0]
        while True:
            try:
                n_slices, n_messages, n_bytes = await oldest.acked
                break
            except Exception as exc:
                await self._ride_out(exc)
        self.in_flight.popleft()
        self.outage.over()
        n_samples = oldest.samples.shape[0]
        report, settings = self.report, self.settings
        tail = daq.SliceLayout(n_samples, settings.slice_len).tail_samples
        report.files_sent += 1
        report.slices_sent += n_slices
        report.messages_sent += n_messages
        report.bytes_sent += n_bytes
        report.tail_samples_dropped += tail
        report.data_seconds += n_samples / settings.sample_rate_hz
        report.wall_seconds = time.monotonic() - self.started
        self.checkpoint.add(oldest.file_index)
        _count_sent(settings, n_samples, n_slices, n_messages, n_bytes, report.realtime_factor)
        if self.progress:
            log.info("run %s file %05d: %d slices in %d messages (tail %d dropped); %d files, %.1f s of "
                     "data in %.1f s = %.2fx real time", self.run, oldest.file_index, n_slices, n_messages,
                     tail, report.files_sent, report.data_seconds, report.wall_seconds,
                     report.realtime_factor)

    async def _ride_out(self, exc: Exception) -> None:
        """The broker did not take a file in flight (exc): wait, restart the Kafka client and
        re-queue, in order, every file in flight not acked yet; repeat until that succeeds.
        Errors that waiting cannot cure are raised as RuntimeError."""
        while True:
            if not isinstance(exc, KafkaError):
                raise exc
            refusal = self.producer.refusal.refusal
            first = next((f for f in self.in_flight if f.needs_sending), self.in_flight[0]).file_index
            if refusal or not is_retriable(exc):
                reason = f"refused the connection: {refusal}" if refusal else f"rejected it: {exc}"
                if isinstance(exc, (MessageSizeTooLargeError, RecordTooLargeError)):
                    reason += f" (max_message_bytes is {self.settings.max_message_bytes})"
                raise RuntimeError(f"run {self.run} file {first:05d}: the broker at "
                                   f"{self.settings.broker} {reason}; not retried") from exc
            if self.outage.since is None:
                self.outage.since = time.time()
            self.outage.attempts += 1
            metrics.PRODUCER_SEND_RETRIES.inc()
            pause_s = backoff_s(self.outage.attempts)
            log.warning("broker %s unreachable since %s (%s); resending file %05d of run %s and the "
                        "later files in flight in %.0f s (attempt %d)", self.settings.broker,
                        datetime.fromtimestamp(self.outage.since).strftime("%H:%M:%S"), exc, first,
                        self.run, pause_s, self.outage.attempts)
            try:
                await self.producer.restart(pause_s)
                # After the old client stopped: a file it did deliver in the meantime is not re-sent.
                for file in [f for f in self.in_flight if f.needs_sending]:
                    file.acked = await self.producer.queue_file(self.run, file.file_index, file.samples,
                                                                file.acquired_at_s)
                return
            except Exception as again:
                exc = again


def _count_sent(settings: Settings, n_samples: int, n_slices: int, n_messages: int, n_bytes: int,
                realtime_factor: float) -> None:
    metrics.PRODUCER_FILES.inc()
    metrics.PRODUCER_SLICES.inc(n_slices)
    metrics.PRODUCER_MESSAGES.inc(n_messages)
    metrics.PRODUCER_BYTES.inc(n_bytes)
    metrics.PRODUCER_DATA_SECONDS.inc(n_samples / settings.sample_rate_hz)
    metrics.PRODUCER_REALTIME_FACTOR.set(realtime_factor)
