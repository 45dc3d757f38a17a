"""The DAQ emulator: read file pairs, cut them into slices, send them to the ``slices`` topic.

One long-lived Kafka producer sends each file as messages of ``slices_per_message`` consecutive
whole slices, keyed ``run/file`` so a file stays in one partition. Pace: ``realtime`` releases one
file per file duration (4.194 s for real files), a number X runs X times faster, ``max`` does not wait.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from aiokafka import AIOKafkaProducer

from . import daq, wire
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
        self.producer = AIOKafkaProducer(
            bootstrap_servers=settings.broker, max_request_size=settings.max_message_bytes,
            acks="all", enable_idempotence=True, linger_ms=2, request_timeout_ms=60000,
            max_batch_size=1 << 20)

    async def __aenter__(self) -> "DaqProducer":
        await ensure_topics(self.settings)
        await self.producer.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.producer.stop()

    async def send_file(self, run: str, file_index: int, samples) -> tuple[int, int, int]:
        """Send one file's whole slices; returns (slices, messages, bytes) once the broker acked all."""
        key = wire.file_key(run, file_index)
        pending, n_slices, n_bytes = [], 0, 0
        for batch in batches_of_file(run, file_index, samples, self.settings):
            value = wire.encode_slice_batch(_stamped(batch))
            pending.append(await self.producer.send(self.settings.slices_topic, value, key=key))
            n_slices += batch.slice_count
            n_bytes += len(value)
        await asyncio.gather(*pending)
        return n_slices, len(pending), n_bytes


def _stamped(batch: wire.SliceBatch) -> wire.SliceBatch:
    return wire.SliceBatch(batch.run, batch.file_index, batch.first_slice, batch.slices_in_file,
                           batch.tail_samples, batch.sample_rate_hz, time.time(), batch.samples)


async def produce_directory(settings: Settings, source: Path, run: str, pace: str | float = "realtime",
                            *, loop: int = 1, progress: bool = True,
                            indices: Iterable[int] | None = None) -> ProduceReport:
    """Send every valid pair of ``source`` (``loop`` times, renumbering files after the first pass).

    Bad pairs (missing partner, odd size, i/q mismatch, NaN/Inf) are logged, listed in the report
    and skipped; the run goes on.
    """
    wire.check_run_id(run)
    speed = parse_pace(pace)
    pairs, problems = daq.scan_dir(source)
    report = ProduceReport()
    for problem in problems:
        log.error("skipping %s", problem)
        report.skipped.append(str(problem))
    if indices is not None:
        wanted = set(indices)
        pairs = [p for p in pairs if p.file_index in wanted]
    if not pairs:
        raise FileNotFoundError(f"no duck_i/duck_q pairs in {source}")
    next_index = max(p.file_index for p in pairs) + 1
    started = time.monotonic()
    async with DaqProducer(settings) as producer:
        for lap in range(loop):
            for pair in pairs:
                file_index = pair.file_index if lap == 0 else next_index
                if lap:
                    next_index += 1
                try:
                    samples = daq.read_pair(pair)
                except daq.DaqError as exc:
                    log.error("skipping %s", exc)
                    report.skipped.append(str(exc))
                    continue
                # Real time: the DAQ finishes writing a file one file-duration after the previous one.
                due = started + report.data_seconds / speed
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                n_slices, n_messages, n_bytes = await producer.send_file(run, file_index, samples)
                layout = daq.SliceLayout(samples.shape[0], settings.slice_len)
                report.files_sent += 1
                report.slices_sent += n_slices
                report.messages_sent += n_messages
                report.bytes_sent += n_bytes
                report.tail_samples_dropped += layout.tail_samples
                report.data_seconds += samples.shape[0] / settings.sample_rate_hz
                report.wall_seconds = time.monotonic() - started
                if progress:
                    log.info("run %s file %05d: %d slices in %d messages (tail %d dropped); "
                             "%d files, %.1f s of data in %.1f s = %.2fx real time",
                             run, file_index, n_slices, n_messages, layout.tail_samples,
                             report.files_sent, report.data_seconds, report.wall_seconds,
                             report.realtime_factor)
    report.wall_seconds = time.monotonic() - started
    return report
