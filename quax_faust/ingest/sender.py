"""Sending files to the ``slices`` topic, and riding out a broker that is away.

A Kafka producer (librdkafka: rdkafka.py) sends each file as messages of ``slices_per_message``
consecutive whole slices, keyed ``run/file`` so a file stays in one partition. A file counts as
sent (report, metrics, checkpoint) only once the delivery reports of all its messages say the
broker acked them.

librdkafka retries each message itself, idempotently, for ``producer_request_timeout_s``. When the
broker is away longer, the producer waits for it, for ever: the files in flight are re-sent on a new
Kafka client after a backoff of 1 s doubling to 30 s, with a warning each attempt. Errors that
waiting cannot cure (refused login, record too large, topic not authorized) stop it at once with a
RuntimeError naming the file.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from datetime import datetime
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
from confluent_kafka import KafkaError

from quax_faust.stream import malloc, metrics

from quax_faust.core import daq, wire
from quax_faust.settings import Settings
from quax_faust.stream.topics import ensure_topics
from quax_faust.ingest.feed import Checkpoint, quarantine
from quax_faust.ingest.rdkafka import AsyncProducer, Refusal, SendError, is_retriable

log = logging.getLogger(__name__)
__all__ = ["DaqProducer", "ProduceReport", "SendError", "backoff_s", "file_messages", "is_retriable"]


def file_messages(run: str, file_index: int, i: np.ndarray, q: np.ndarray, settings: Settings,
                  acquired_at_s: float = wire.UNKNOWN_TIME) -> Iterator[tuple[np.ndarray, int]]:
    """The file's slice messages, each with its number of slices: settings.slices_per_message whole
    slices a message (the tail dropped), from the file's in-phase and quadrature samples i, q
    (float32, shape (n_samples,)), stamped with the time they are made (produced_at_s) and the
    file's acquisition time (Unix s, NaN if unknown). Each message is built in one buffer, the
    samples interleaved straight into it, and is valid until the next one is made: the Kafka client
    copies it when it takes it."""
    slice_len, per_message = settings.slice_len, settings.slices_per_message
    layout = daq.SliceLayout(i.shape[0], slice_len)
    buffer = np.empty(wire.slice_batch_size(run, min(per_message, layout.n_slices), slice_len), np.uint8)
    for first in range(0, layout.n_slices, per_message):
        count = min(per_message, layout.n_slices - first)
        samples = slice(first * slice_len, (first + count) * slice_len)
        yield wire.encode_slice_channels(buffer, run, file_index, first, layout.n_slices, layout.tail_samples,
                                         settings.sample_rate_hz, time.time(), i[samples], q[samples],
                                         slice_len, acquired_at_s), count


def backoff_s(attempt: int, first_s: float = 1.0, cap_s: float = 30.0) -> float:
    """Wait before attempt 1, 2, 3, ... to reach the broker again: first_s doubling up to cap_s (s)."""
    return min(cap_s, first_s * 2.0 ** min(attempt - 1, 32))


class _FileAcks:
    """One file's messages counted down by their delivery reports (in the asyncio loop): the future
    gives (slices, messages, bytes) once every one is acked, or the first error as a SendError."""

    def __init__(self, started: float):
        self.future = asyncio.get_running_loop().create_future()
        self.future.add_done_callback(_consume_error)  # a file re-sent after an outage is not awaited
        self.started, self.pending, self.all_queued = started, 0, False
        self.n_slices = self.n_messages = self.n_bytes = 0

    def delivered(self, error: KafkaError | None) -> None:
        if self.future.done():
            return
        if error is not None:
            self.future.set_exception(SendError(error))
            return
        self.pending -= 1
        self.check_done()

    def check_done(self) -> None:
        if self.all_queued and self.pending == 0 and not self.future.done():
            metrics.PRODUCER_SEND_SECONDS.observe(time.perf_counter() - self.started)
            self.future.set_result((self.n_slices, self.n_messages, self.n_bytes))


class DaqProducer:
    """A Kafka producer sending file pairs as slice messages; ``restart`` gives it a new client."""

    def __init__(self, settings: Settings):
        self.settings = settings
        malloc.keep_freed_memory()  # reuse the big buffers of each file (quax_faust/stream/malloc.py)
        self.refusal = Refusal()
        self.producer: AsyncProducer | None = None

    async def __aenter__(self) -> "DaqProducer":
        await ensure_topics(self.settings)
        self.producer = AsyncProducer(self.settings, self.refusal)
        return self

    async def __aexit__(self, exc_type, *exc) -> None:
        # A clean end waits for the last acks (a file's future already has them); after an error
        # nobody will wait for them.
        if self.producer is not None:
            await self.producer.close(self.settings.producer_request_timeout_s if exc_type is None else 0.0)

    async def restart(self, pause_s: float) -> None:
        """Drop the Kafka client (its queued messages fail: their files are re-sent), wait pause_s
        seconds, start a new one and wait until the broker answers it (SendError if it does not
        within producer_request_timeout_s). A client that failed may keep stale connections and
        state (an idempotent producer's sequence numbers)."""
        if self.producer is not None:
            await self.producer.close(0.0)
        await asyncio.sleep(pause_s)
        self.refusal.refusal = None
        self.producer = AsyncProducer(self.settings, self.refusal)
        await self.producer.reachable(self.settings.slices_topic, self.settings.producer_request_timeout_s)

    async def send_file(self, run: str, file_index: int, i: np.ndarray, q: np.ndarray,
                        acquired_at_s: float = wire.UNKNOWN_TIME) -> tuple[int, int, int]:
        """Send one file's whole slices; returns (slices, messages, bytes) once the broker acked all."""
        return await (await self.queue_file(run, file_index, i, q, acquired_at_s))

    async def queue_file(self, run: str, file_index: int, i: np.ndarray, q: np.ndarray,
                         acquired_at_s: float = wire.UNKNOWN_TIME) -> asyncio.Future:
        """Hand one file's messages (its in-phase and quadrature samples i, q: float32, shape
        (n_samples,); acquired at acquired_at_s, Unix s, NaN unknown) to the Kafka client; the
        returned future gives (slices, messages, bytes) once the broker acked them all.

        No copy of the file is made besides each message (file_messages) and librdkafka's own."""
        key = wire.file_key(run, file_index)
        acks = _FileAcks(time.perf_counter())
        for value, count in file_messages(run, file_index, i, q, self.settings, acquired_at_s):
            acks.pending += 1
            try:
                await self.producer.produce(self.settings.slices_topic, value, key, acks.delivered)
            except SendError:
                acks.pending -= 1
                raise
            acks.n_messages += 1
            acks.n_slices += count
            acks.n_bytes += value.nbytes
        acks.all_queued = True
        acks.check_done()
        return acks.future


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
    """A file handed to the Kafka client; its samples (i, q: float32, shape (n_samples,)) are kept
    until it is acked, to re-send it."""

    file_index: int
    i: np.ndarray
    q: np.ndarray
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
        file = _FileInFlight(file_index, read.i, read.q, acquired_at_s=read.acquired_at_s)
        self.queued_data_s += read.n_samples / self.settings.sample_rate_hz
        self.in_flight.append(file)
        try:
            file.acked = await self.producer.queue_file(self.run, file_index, file.i, file.q, file.acquired_at_s)
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
        n_samples = oldest.i.shape[0]
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
            if not isinstance(exc, SendError):
                raise exc
            refusal = self.producer.refusal.refusal
            first = next((f for f in self.in_flight if f.needs_sending), self.in_flight[0]).file_index
            if refusal or not is_retriable(exc):
                reason = f"refused the connection: {refusal}" if refusal else f"rejected it: {exc}"
                if exc.code == KafkaError.MSG_SIZE_TOO_LARGE:
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
                    file.acked = await self.producer.queue_file(self.run, file.file_index, file.i, file.q,
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
