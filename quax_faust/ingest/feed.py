"""The directory feed: which DAQ file pairs are ready to send, and their samples once read.

``follow`` watches a live DAQ directory: a pair is sent once both files exist and their sizes have
not changed for ``settle_s``. A checkpoint (var/producer/<run>.json) records the files sent, so a
restarted producer resumes with the next file; re-sending a file changes nothing downstream.
Bad pairs are reported, moved to a quarantine folder with a ``.reason.txt``, and skipped. A pair is
read with its acquisition time (``daq.acquired_at_s``), which the producer puts on its messages.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from quax_faust.stream import metrics

from quax_faust.core import daq
from quax_faust.core.accumulators import IndexSet
from quax_faust.settings import Settings

log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class DaqFile:
    """A pair as read for sending: its in-phase and quadrature samples (float32, shape (n_samples,)
    each) and when the DAQ acquired it (Unix s). Kept apart: the producer interleaves them straight
    into its messages."""

    i: np.ndarray
    q: np.ndarray
    acquired_at_s: float

    @property
    def n_samples(self) -> int:
        return int(self.i.shape[0])


def _read_checked(pair: daq.FilePair, settings: Settings) -> tuple[np.ndarray, np.ndarray]:
    """The pair's (i, q) samples; DaqError if it is bad or shorter than one slice."""
    daq.check_sidecar(pair, settings.sample_rate_hz, settings.lo_frequency_hz)  # settings: the run's LO
    i, q = daq.read_channels(pair)
    if daq.SliceLayout(i.shape[0], settings.slice_len).n_slices == 0:
        raise daq.DaqError("too_short", pair.i_path, f"{i.shape[0]} samples, fewer than one "
                           f"slice of {settings.slice_len}")
    return i, q


def _read_file(pair: daq.FilePair, settings: Settings) -> DaqFile:
    """The pair's checked samples and its acquisition time (daq.acquired_at_s); DaqError if bad."""
    return DaqFile(*_read_checked(pair, settings), daq.acquired_at_s(pair))


def _read_in_thread(pair: daq.FilePair, settings: Settings) -> asyncio.Future:
    """_read_file in a worker thread, started now (numpy releases the GIL while reading)."""
    return asyncio.ensure_future(asyncio.to_thread(_read_file, pair, settings))
