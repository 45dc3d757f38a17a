"""The DAQ emulator: read file pairs, cut them into slices, send them to the ``slices`` topic.

One long-lived Kafka producer sends each file as messages of ``slices_per_message`` consecutive
whole slices, keyed ``run/file`` so a file stays in one partition. Pace: ``realtime`` releases one
file per file duration (4.194 s for real files), a number X runs X times faster, ``max`` does not wait.

``follow`` watches a live DAQ directory: a pair is sent once both files exist and their sizes have
not changed for ``settle_s``. A checkpoint (var/producer/<run>.json) records the files sent, so a
restarted producer resumes with the next file; re-sending a file changes nothing downstream.
Bad pairs are reported, moved to a quarantine folder with a ``.reason.txt``, and skipped.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from aiokafka import AIOKafkaProducer

from . import broker_auth, daq, malloc, metrics, wire
from .accumulators import IndexSet
from .settings import Settings
from .topics import ensure_topics

log = logging.getLogger(__name__)


def parse_pace(pace: str | float) -> float:
    """'realtime' -> 1.0, 'max' -> inf, '10' -> 10.0 (times real time)."""
    if isinstance(pace, (int, float)):
        value = float(pace)
    elif pace == "realtime":
        value = 1.0
    elif pace == "max":
        value = float("inf")
    else:
        try:
            value = float(pace)
        except ValueError:
            raise ValueError(f"pace {pace!r}: expected realtime, max or a number > 0") from None
    if not value > 0:
        raise ValueError(f"pace {pace!r} must be > 0")
    return value


@dataclass
class ProduceReport:
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


def batches_of_file(run: str, file_index: int, samples, settings: Settings) -> Iterator[wire.SliceBatch]:
    """The file's whole slices in messages of settings.slices_per_message (produced_at_s set later)."""
    layout = daq.SliceLayout(samples.shape[0], settings.slice_len)
    slices = daq.whole_slices(samples, settings.slice_len)
    for first in range(0, layout.n_slices, settings.slices_per_message):
        yield wire.SliceBatch(run, file_index, first, layout.n_slices, layout.tail_samples,
                              settings.sample_rate_hz, 0.0, slices[first:first + settings.slices_per_message])


class DaqProducer:
    """A long-lived Kafka producer sending file pairs as slice messages."""

    def __init__(self, settings: Settings):
        self.settings = settings
        malloc.keep_freed_memory()  # reuse the big buffers of each file (quax_faust/malloc.py)
        self.producer = AIOKafkaProducer(
            **broker_auth.client_options(settings), max_request_size=settings.max_message_bytes,
            acks="all", enable_idempotence=True, linger_ms=2, request_timeout_ms=60000,
            # aiokafka keeps one request in flight per broker and one batch per partition: batches
            # as large as the broker takes let the messages queued meanwhile go in the next request
            # (with 1 MiB, each 3 MiB message was a request of its own: docs/performance.md).
            max_batch_size=settings.max_message_bytes)

    async def __aenter__(self) -> "DaqProducer":
        await ensure_topics(self.settings)
        await self.producer.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.producer.stop()

    async def send_file(self, run: str, file_index: int, samples) -> tuple[int, int, int]:
        """Send one file's whole slices; returns (slices, messages, bytes) once the broker acked all."""
        return await (await self.queue_file(run, file_index, samples))

    async def queue_file(self, run: str, file_index: int, samples) -> asyncio.Future:
        """Hand one file's messages to the Kafka client; the returned future gives (slices,
        messages, bytes) once the broker acked them all."""
        key = wire.file_key(run, file_index)
        pending, n_slices, n_bytes = [], 0, 0
        started = time.perf_counter()
        for batch in batches_of_file(run, file_index, samples, self.settings):
            value = wire.encode_slice_batch(_stamped(batch))
            pending.append(await self.producer.send(self.settings.slices_topic, value, key=key))
            n_slices += batch.slice_count
            n_bytes += len(value)

        async def acked() -> tuple[int, int, int]:
            await asyncio.gather(*pending)
            metrics.PRODUCER_SEND_SECONDS.observe(time.perf_counter() - started)
            return n_slices, len(pending), n_bytes

        return asyncio.ensure_future(acked())


def _stamped(batch: wire.SliceBatch) -> wire.SliceBatch:
    return wire.SliceBatch(batch.run, batch.file_index, batch.first_slice, batch.slices_in_file,
                           batch.tail_samples, batch.sample_rate_hz, time.time(), batch.samples)


class Checkpoint:
    """The file indices of a run already sent and acknowledged, kept in a small JSON file."""

    def __init__(self, path: Path | None):
        self.path = path
        self.sent = IndexSet()
        if path is not None and path.exists():
            self.sent = IndexSet(json.loads(path.read_text())["sent"])

    def add(self, file_index: int) -> None:
        self.sent.add(file_index)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"sent": self.sent.bounds().tolist()}))
            tmp.replace(self.path)  # atomic: a crash leaves the old or the new checkpoint

    def __contains__(self, file_index: int) -> bool:
        return file_index in self.sent


def quarantine(paths: Iterable[Path], reason: str, quarantine_dir: Path) -> None:
    """Move bad DAQ files out of the way, with a note of why, so the run goes on without them."""
    quarantine_dir.mkdir(parents=True, exist_ok=True)
    moved = []
    for path in paths:
        if path.exists():
            shutil.move(str(path), quarantine_dir / path.name)
            moved.append(path.name)
    if moved:
        (quarantine_dir / (Path(moved[0]).stem + ".reason.txt")).write_text(reason + "\n")
        log.error("quarantined %s in %s: %s", " + ".join(moved), quarantine_dir, reason)


@dataclass
class _PendingPair:
    """A pair seen in follow mode, not yet stable: sizes at the last look and when they last changed."""

    sizes: tuple[int, int] | None
    changed_at: float


class DirectoryFeed:
    """The pairs of a DAQ directory that are ready to send, in file order.

    In follow mode a pair is ready when both files exist and their sizes have not changed for
    settle_s; a file whose partner has not appeared after partner_timeout_s is quarantined.
    """

    def __init__(self, source: Path, quarantine_dir: Path, *, follow: bool, settle_s: float = 1.0,
                 partner_timeout_s: float = 120.0):
        self.source, self.quarantine_dir, self.follow = Path(source), Path(quarantine_dir), follow
        self.settle_s, self.partner_timeout_s = settle_s, partner_timeout_s
        self._seen: dict[int, _PendingPair] = {}

    def ready(self, skip: Checkpoint) -> tuple[list[daq.FilePair], list[str]]:
        pairs, problems = daq.scan_dir(self.source)
        now = time.monotonic()
        bad = []
        for problem in problems:  # files without a partner
            index = int(daq.FILE_PATTERN.fullmatch(problem.path.name).group(2))
            first_seen = self._seen.setdefault(index, _PendingPair(None, now)).changed_at
            if not self.follow or now - first_seen > self.partner_timeout_s:
                quarantine([problem.path], str(problem), self.quarantine_dir)
                bad.append(str(problem))
                metrics.PRODUCER_SKIPPED.labels(reason=problem.reason).inc()
                self._seen.pop(index, None)
        ready = []
        for pair in pairs:
            if pair.file_index in skip:
                continue
            if self.follow:
                sizes = (pair.i_path.stat().st_size, pair.q_path.stat().st_size)
                entry = self._seen.setdefault(pair.file_index, _PendingPair(sizes, now))
                if entry.sizes != sizes:
                    entry.sizes, entry.changed_at = sizes, now
                if now - entry.changed_at < self.settle_s:
                    continue
            self._seen.pop(pair.file_index, None)
            ready.append(pair)
        return ready, bad


async def produce_directory(settings: Settings, source: Path, run: str, pace: str | float = "realtime",
                            *, loop: int = 1, progress: bool = True,
                            indices: Iterable[int] | None = None, follow: bool = False,
                            checkpoint: bool = True, quarantine_dir: Path | None = None,
                            idle_exit_s: float | None = None, settle_s: float = 1.0,
                            partner_timeout_s: float = 120.0) -> ProduceReport:
    """Send the valid pairs of ``source`` as run ``run``; return what was sent and skipped.

    loop > 1 sends the directory again with new file numbers (a demo of an endless run; no
    checkpoint then). follow keeps watching for new pairs until Ctrl-C, or until no new pair has
    come for idle_exit_s seconds. Bad pairs are logged, quarantined (default: source/quarantine)
    and listed in the report; the run goes on.
    """
    wire.check_run_id(run)
    speed = float("inf") if follow else parse_pace(pace)
    metrics.PRODUCER_TARGET_REALTIME_FACTOR.set(speed)
    source = Path(source)
    if not source.is_dir():
        raise FileNotFoundError(f"DAQ directory {source} does not exist")
    feed = DirectoryFeed(source, quarantine_dir or source / "quarantine", follow=follow,
                         settle_s=settle_s, partner_timeout_s=partner_timeout_s)
    use_checkpoint = checkpoint and loop == 1
    done = Checkpoint(Path(settings.var_dir) / "producer" / f"{run}.json" if use_checkpoint else None)
    wanted = None if indices is None else set(indices)
    report = ProduceReport()
    started = last_new = time.monotonic()
    async with DaqProducer(settings) as producer:
        sending = _Sending(producer, settings, run, speed, started, report, feed.quarantine_dir,
                           progress, done, settings.producer_files_in_flight)
        next_index = None
        for lap in range(loop):
            while True:
                pairs, bad = feed.ready(done if lap == 0 else Checkpoint(None))
                report.skipped += bad
                pairs = [p for p in pairs if wanted is None or p.file_index in wanted]
                if lap == 0 and not follow:
                    report.already_sent = sum(1 for p in daq.scan_dir(source)[0] if p.file_index in done)
                    if not pairs and not report.already_sent:
                        raise FileNotFoundError(f"no valid duck_i/duck_q pairs in {source}")
                if next_index is None and pairs:
                    next_index = max(p.file_index for p in pairs) + 1
                # Read the next pair in a thread while this one is sent (numpy releases the GIL).
                reading = _read_in_thread(pairs[0], settings) if pairs else None
                for k, pair in enumerate(pairs):
                    file_index = pair.file_index
                    if lap:
                        file_index, next_index = next_index, next_index + 1
                    current, reading = reading, _read_in_thread(pairs[k + 1], settings) if k + 1 < len(pairs) else None
                    if await sending.send_pair(pair, file_index, current):
                        last_new = time.monotonic()
                await sending.drain()
                if not follow:
                    break
                if idle_exit_s is not None and time.monotonic() - last_new > idle_exit_s:
                    break
                await asyncio.sleep(0.2)
    report.wall_seconds = time.monotonic() - started
    if report.already_sent:
        log.info("%d files of run %s were sent before (checkpoint); not sent again", report.already_sent, run)
    return report


def _read_checked(pair: daq.FilePair, settings: Settings) -> np.ndarray:
    """The pair's samples; DaqError if it is bad or shorter than one slice."""
    samples = daq.read_pair(pair)
    if daq.SliceLayout(samples.shape[0], settings.slice_len).n_slices == 0:
        raise daq.DaqError("too_short", pair.i_path, f"{samples.shape[0]} samples, fewer than one "
                           f"slice of {settings.slice_len}")
    return samples


def _read_in_thread(pair: daq.FilePair, settings: Settings) -> asyncio.Future:
    return asyncio.ensure_future(asyncio.to_thread(_read_checked, pair, settings))


@dataclass
class _Sending:
    """One run being sent: pacing, files in flight, and what happens when the broker acks a file.

    Up to ``files_in_flight`` files are queued in the Kafka client before the oldest one's acks are
    awaited, so the next file is read and queued while the broker stores the previous one; a file
    counts as sent (report, metrics, checkpoint) only once all its messages are acked.
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
    in_flight: deque = field(default_factory=deque)

    async def send_pair(self, pair: daq.FilePair, file_index: int, reading: asyncio.Future) -> bool:
        """Send one pair (paced) once read; quarantine it if bad. True if it was queued."""
        try:
            samples = await reading
        except daq.DaqError as exc:
            quarantine([pair.i_path, pair.q_path], str(exc), self.quarantine_dir)
            self.report.skipped.append(str(exc))
            metrics.PRODUCER_SKIPPED.labels(reason=exc.reason).inc()
            return False
        # Real time: the DAQ finishes writing a file one file-duration after the previous one.
        delay = self.started + self.queued_data_s / self.speed - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        self.queued_data_s += samples.shape[0] / self.settings.sample_rate_hz
        acked = await self.producer.queue_file(self.run, file_index, samples)
        self.in_flight.append((acked, file_index, samples.shape[0]))
        while len(self.in_flight) >= max(1, self.files_in_flight):
            await self._finish_oldest()
        return True

    async def drain(self) -> None:
        while self.in_flight:
            await self._finish_oldest()

    async def _finish_oldest(self) -> None:
        acked, file_index, n_samples = self.in_flight.popleft()
        n_slices, n_messages, n_bytes = await acked
        report, settings = self.report, self.settings
        tail = daq.SliceLayout(n_samples, settings.slice_len).tail_samples
        report.files_sent += 1
        report.slices_sent += n_slices
        report.messages_sent += n_messages
        report.bytes_sent += n_bytes
        report.tail_samples_dropped += tail
        report.data_seconds += n_samples / settings.sample_rate_hz
        report.wall_seconds = time.monotonic() - self.started
        self.checkpoint.add(file_index)
        _count_sent(settings, n_samples, n_slices, n_messages, n_bytes, report.realtime_factor)
        if self.progress:
            log.info("run %s file %05d: %d slices in %d messages (tail %d dropped); %d files, %.1f s of "
                     "data in %.1f s = %.2fx real time", self.run, file_index, n_slices, n_messages,
                     tail, report.files_sent, report.data_seconds, report.wall_seconds,
                     report.realtime_factor)


def _count_sent(settings: Settings, n_samples: int, n_slices: int, n_messages: int, n_bytes: int,
                realtime_factor: float) -> None:
    metrics.PRODUCER_FILES.inc()
    metrics.PRODUCER_SLICES.inc(n_slices)
    metrics.PRODUCER_MESSAGES.inc(n_messages)
    metrics.PRODUCER_BYTES.inc(n_bytes)
    metrics.PRODUCER_DATA_SECONDS.inc(n_samples / settings.sample_rate_hz)
    metrics.PRODUCER_REALTIME_FACTOR.set(realtime_factor)
