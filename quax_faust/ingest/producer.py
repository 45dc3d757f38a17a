"""The DAQ emulator: read file pairs, cut them into slices, send them to the ``slices`` topic.

The stage in data-flow order: ``feed.py`` finds the pairs ready to send and reads them,
``sender.py`` sends them and rides out broker outages, and ``produce_directory`` here runs the two
for one run. Pace: ``realtime`` releases one file per file duration (4.194 s for real files), a
number X runs X times faster, ``max`` does not wait.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from quax_faust.stream import metrics

from quax_faust.core import daq, run_meta, wire
from quax_faust.settings import Settings
from quax_faust.ingest.feed import Checkpoint, DirectoryFeed, _read_in_thread
from quax_faust.ingest.run_record import record_run_metadata
from quax_faust.ingest.sender import DaqProducer, ProduceReport, _Sending

log = logging.getLogger(__name__)


def _given_metadata(settings: Settings, source: Path, metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """What this producer says about the run: the given fields, the first pair's sidecar (rate,
    centre frequency = LO), and settings.lo_frequency_hz if neither gives an LO."""
    given = run_meta.merge({}, metadata or {}, what="the given metadata")
    pairs = daq.scan_dir(source)[0]
    sidecar = daq.read_sidecar(pairs[0]) if pairs else None
    if sidecar is not None:
        given = run_meta.merge(given, sidecar.run_fields(), what=f"the given metadata (sidecar of {pairs[0].i_path.name})")
    given.setdefault("sample_rate_hz", settings.sample_rate_hz)
    if given["sample_rate_hz"] != settings.sample_rate_hz:
        raise run_meta.MetadataError("metadata_conflict", f"sample_rate_hz {given['sample_rate_hz']:g} Hz, but "
                                     f"this producer cuts slices at {settings.sample_rate_hz:g} Hz (setting sample_rate_hz)")
    return given


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


async def produce_directory(settings: Settings, source: Path, run: str, pace: str | float = "realtime",
                            *, loop: int = 1, progress: bool = True,
                            indices: Iterable[int] | None = None, follow: bool = False,
                            checkpoint: bool = True, quarantine_dir: Path | None = None,
                            idle_exit_s: float | None = None, settle_s: float = 1.0,
                            partner_timeout_s: float = 120.0,
                            metadata: Mapping[str, Any] | None = None) -> ProduceReport:
    """Send the valid pairs of ``source`` as run ``run``; return what was sent and skipped.

    loop > 1 sends the directory again with new file numbers (a demo of an endless run; no
    checkpoint then). follow keeps watching for new pairs until Ctrl-C, or until no new pair has
    come for idle_exit_s seconds. Bad pairs are logged, quarantined (default: source/quarantine)
    and listed in the report; the run goes on.

    metadata: fields for the run's metadata record (core/run_meta.py), merged with what is recorded
    and what the first pair's SigMF sidecar says before anything is sent; a contradiction raises
    MetadataError and nothing is sent. A run without a recorded LO gets settings.lo_frequency_hz.
    Every pair is then checked against the run's LO and sample rate (its sidecar, if any).
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
    async with DaqProducer(settings) as producer:  # the topics exist from here
        fields = await record_run_metadata(settings, run, _given_metadata(settings, source, metadata), producer.producer)
        settings = settings.replace(lo_frequency_hz=fields["lo_frequency_hz"])
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
