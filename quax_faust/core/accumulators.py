"""What the tables hold: a file's running sums and a run's running average. Pure numpy, no Kafka.

Both are idempotent by construction, which is how every slice is counted exactly once under
Kafka's at-least-once delivery (docs/architecture.md, "Exactly once, by idempotence"):

- ``FileAccumulator`` remembers which slices of its file it has counted (a bitmap); a redelivered or
  duplicated slice changes nothing.
- ``RunAccumulator`` remembers which files it has folded in (an interval set of file indices); a
  spectrum delivered twice is folded once.

Both serialise to compact versioned bytes for the RocksDB-backed Faust tables (a file's: version 2,
with its acquisition time; version 1, stored before, still reads).
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass, field

import numpy as np

from quax_faust.core import dsp
from quax_faust.core.errors import QuaxError
from quax_faust.core.index_set import IndexSet
from quax_faust.core.wire import UNKNOWN_TIME, FileSpectrum, SliceBatch

FILLING, COMPLETE = 0, 1


class StateError(QuaxError):
    """A message that does not fit the state it would update (e.g. another slice length), or a
    stored table value that cannot be read (reason ``bad_table_value``)."""


@dataclass(frozen=True)
class BatchFold:
    """What folding one slice batch into its file did, for the worker's metrics."""

    n_new_slices: int  # slices counted now
    n_duplicate_slices: int  # slices of the batch counted before (or of a file already complete)
    fft_seconds: float  # wall time of the FFT and power sums (0 if nothing was new)
    sample_bytes: int  # bytes of samples transformed (0 if nothing was new)
    data_seconds: float  # detector time of the new slices: n_new_slices * slice_len / sample_rate_hz


# By version: magic, version, status, run_len, file_index, slices_in_file, slice_len, tail_samples,
# n_counted, duplicate_slices, sample_rate_hz, first_produced_at_s, last_produced_at_s; version 2
# adds acquired_at_s. Version 2 is written; a version-1 value (stored before) reads as "unknown".
_FILE_HEADS = {1: struct.Struct("<4sHHHIIIIIIddd"), 2: struct.Struct("<4sHHHIIIIIIdddd")}
_FILE_VERSION = 2
_FILE_MAGIC = b"QXFA"


@dataclass
class FileAccumulator:
    """Running per-bin sums (V**2/Hz, fftshifted, float64) over the counted slices of one file.

    ``acquired_at_s``: when the DAQ acquired the file (Unix seconds), NaN while unknown: the earliest
    known one of the batches whose slices were counted (all of a file's batches carry the same one,
    unless the producer re-sent the file after its time changed; the earliest is the one kept
    whatever the order of delivery, as the Spark audit keeps it).
    """

    run: str
    file_index: int
    slices_in_file: int
    slice_len: int
    tail_samples: int
    sample_rate_hz: float
    counted: np.ndarray  # (slices_in_file,) bool
    power_sum: np.ndarray | None  # (slice_len,) float64; None once complete (the spectrum left)
    power_sumsq: np.ndarray | None
    n_counted: int = 0
    duplicate_slices: int = 0
    first_produced_at_s: float = float("inf")
    last_produced_at_s: float = float("-inf")
    status: int = FILLING
    acquired_at_s: float = UNKNOWN_TIME

    @classmethod
    def for_batch(cls, batch: SliceBatch) -> "FileAccumulator":
        return cls(batch.run, batch.file_index, batch.slices_in_file, batch.slice_len,
                   batch.tail_samples, batch.sample_rate_hz,
                   np.zeros(batch.slices_in_file, dtype=bool),
                   np.zeros(batch.slice_len), np.zeros(batch.slice_len))

    @property
    def is_complete(self) -> bool:
        return self.n_counted == self.slices_in_file

    def new_slices(self, batch: SliceBatch) -> np.ndarray:
        """(slice_count,) bool mask of the batch's slices not counted yet; checks the batch fits."""
        for name in ("slices_in_file", "slice_len", "tail_samples", "sample_rate_hz"):
            if getattr(batch, name) != getattr(self, name):
                raise StateError("inconsistent_file", f"{batch.run} file {batch.file_index}: {name} "
                                 f"{getattr(batch, name)} differs from {getattr(self, name)} seen before")
        seen = self.counted[batch.first_slice: batch.first_slice + batch.slice_count]
        return ~seen

    def fold(self, batch: SliceBatch, *, block_rows: int, threads: int) -> BatchFold:
        """FFT the batch's slices not counted yet and add their periodograms (``add``).

        Repeats are only counted, and so is the whole batch of a file already complete (its sums
        went with its published spectrum; the batch is then not checked against the file).
        block_rows, threads: the FFT's block size and threads (``dsp.power_sums``). Raises
        StateError as ``new_slices`` and ``add`` do.
        """
        if self.status == COMPLETE:
            return BatchFold(0, batch.slice_count, 0.0, 0, 0.0)
        new = self.new_slices(batch)
        sums, fft_seconds = None, 0.0
        if new.any():
            started = time.perf_counter()
            sums = dsp.power_sums(batch.samples, batch.sample_rate_hz, counted=None if new.all() else new,
                                  block_rows=block_rows, threads=threads)
            fft_seconds = time.perf_counter() - started
        self.add(batch, new, sums)
        n_new = 0 if sums is None else sums.n_slices
        return BatchFold(n_new, batch.slice_count - n_new, fft_seconds,
                         batch.samples.nbytes if n_new else 0,
                         n_new * batch.slice_len / batch.sample_rate_hz)

    def add(self, batch: SliceBatch, new: np.ndarray, sums: dsp.PowerSums | None) -> None:
        """Count the batch's new slices (mask ``new``), whose periodogram sums are ``sums``.

        ``sums`` is None when no slice is new; the repeats are counted in ``duplicate_slices``.
        """
        if self.status != FILLING:
            raise StateError("file_complete", f"{self.run} file {self.file_index} is already complete")
        if sums is not None and not (np.isfinite(sums.power_sum).all() and np.isfinite(sums.power_sumsq).all()):
            raise StateError("non_finite_samples", f"{self.run} file {self.file_index}: slices "
                             f"{batch.first_slice}..{batch.first_slice + batch.slice_count - 1} hold NaN/Inf")
        n_new = 0 if sums is None else sums.n_slices
        self.duplicate_slices += batch.slice_count - n_new
        if sums is None:
            return
        self.power_sum += sums.power_sum
        self.power_sumsq += sums.power_sumsq
        self.counted[batch.first_slice: batch.first_slice + batch.slice_count] |= new
        self.n_counted += n_new
        self.first_produced_at_s = min(self.first_produced_at_s, batch.produced_at_s)
        self.last_produced_at_s = max(self.last_produced_at_s, batch.produced_at_s)
        self.acquired_at_s = float(np.fmin(self.acquired_at_s, batch.acquired_at_s))  # NaN: unknown

    def spectrum(self, completed_at_s: float) -> FileSpectrum:
        mean, std = dsp.mean_and_std(self.power_sum, self.power_sumsq, self.n_counted)
        return FileSpectrum(self.run, self.file_index, self.n_counted, self.tail_samples,
                            self.sample_rate_hz, self.first_produced_at_s, self.last_produced_at_s,
                            completed_at_s, mean, std, self.acquired_at_s)

    def mark_complete(self) -> None:
        """The spectrum has been published: drop the sums, keep what is needed to ignore repeats."""
        self.status = COMPLETE
        self.power_sum = self.power_sumsq = None

    def to_bytes(self) -> bytes:
        run = self.run.encode()
        head = _FILE_HEADS[_FILE_VERSION].pack(
            _FILE_MAGIC, _FILE_VERSION, self.status, len(run), self.file_index, self.slices_in_file,
            self.slice_len, self.tail_samples, self.n_counted, self.duplicate_slices, self.sample_rate_hz,
            self.first_produced_at_s, self.last_produced_at_s, self.acquired_at_s)
        parts = [head, run, np.packbits(self.counted).tobytes()]
        if self.status == FILLING:
            parts += [self.power_sum.astype("<f8").tobytes(), self.power_sumsq.astype("<f8").tobytes()]
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes) -> "FileAccumulator":
        """Read a ``files`` table value (``to_bytes``, or version 1 without ``acquired_at_s``: NaN);
        StateError ``bad_table_value`` if it is not one."""
        what = "files table value"
        shortest = _FILE_HEADS[1].size
        if len(data) < shortest:
            raise _bad_value(what, f"{len(data)} bytes, shorter than the {shortest}-byte header")
        magic, version = struct.unpack_from("<4sH", data)
        head = _FILE_HEADS.get(version)
        if magic != _FILE_MAGIC or head is None:
            raise _bad_value(what, f"magic {magic!r} version {version}: not a version-1 or version-2 file "
                             f"accumulator ({_FILE_MAGIC!r})")
        if len(data) < head.size:
            raise _bad_value(what, f"{len(data)} bytes, shorter than the {head.size}-byte header of version {version}")
        (magic, version, status, run_len, file_index, slices_in_file, slice_len, tail, n_counted,
         duplicates, rate, first_at, last_at, *acquired) = head.unpack_from(data)
        acquired_at_s = acquired[0] if acquired else UNKNOWN_TIME
        if status not in (FILLING, COMPLETE):
            raise _bad_value(what, f"status {status}, expected {FILLING} (filling) or {COMPLETE} (complete)")
        if not (np.isnan(acquired_at_s) or (np.isfinite(acquired_at_s) and acquired_at_s >= 0)):
            raise _bad_value(what, f"acquired_at_s {acquired_at_s} is not a time (>= 0 s, or NaN: unknown)")
        n_bitmap = (slices_in_file + 7) // 8
        n_sums = 2 * 8 * slice_len if status == FILLING else 0
        expected = head.size + run_len + n_bitmap + n_sums
        if len(data) != expected:
            raise _bad_value(what, f"{len(data)} bytes, expected {expected} ({head.size}-byte version-{version} "
                             f"header + {run_len} run id + {n_bitmap} bitmap of {slices_in_file} slices + "
                             f"{n_sums} sums of {slice_len} bins)")
        offset = head.size
        run = _decode_run(what, data[offset: offset + run_len])
        what = f"files table value of {run!r} file {file_index}"
        offset += run_len
        counted = np.unpackbits(np.frombuffer(data, np.uint8, n_bitmap, offset))[:slices_in_file].astype(bool)
        offset += n_bitmap
        if int(np.count_nonzero(counted)) != n_counted:
            raise _bad_value(what, f"{n_counted} slices counted, but its bitmap marks {np.count_nonzero(counted)}")
        sums = [None, None]
        if status == FILLING:
            arr = np.frombuffer(data, "<f8", 2 * slice_len, offset).reshape(2, slice_len)
            if not np.isfinite(arr).all():  # add() never stores one
                raise _bad_value(what, "power sums hold NaN or Inf")
            sums = [arr[0].copy(), arr[1].copy()]
        return cls(run, file_index, slices_in_file, slice_len, tail, rate, counted, sums[0], sums[1],
                   n_counted, duplicates, first_at, last_at, status, acquired_at_s)


def _bad_value(what: str, problem: str) -> StateError:
    return StateError("bad_table_value", f"{what}: {problem}")


def _decode_run(what: str, raw: bytes) -> str:
    try:
        return bytes(raw).decode()
    except UnicodeDecodeError as exc:
        raise _bad_value(what, f"run id {bytes(raw)[:40]!r} is not UTF-8 ({exc.reason})") from None


# magic, version, run_len, slice_len, n_intervals, n_files, n_slices, latest_file_index,
# duplicate_files, tail_samples_total, sample_rate_hz, first_completed_at_s, last_completed_at_s
_RUN_HEAD = struct.Struct("<4sHHIIIQIIQddd")
_RUN_MAGIC = b"QXRA"


@dataclass
class RunAccumulator:
    """Run-wide per-bin mean and sum of squared deviations (M2) over every counted slice.

    mean, m2: (slice_len,) float64, fftshifted, V**2/Hz. Files are merged with Chan's formula, so
    the mean is exactly the mean over all whole slices of the run, each counted once.
    """

    run: str
    slice_len: int
    sample_rate_hz: float
    mean: np.ndarray
    m2: np.ndarray
    files: IndexSet = field(default_factory=IndexSet)
    n_slices: int = 0
    latest_file_index: int = 0
    duplicate_files: int = 0
    tail_samples_total: int = 0
    first_completed_at_s: float = float("inf")
    last_completed_at_s: float = float("-inf")

    @classmethod
    def for_spectrum(cls, spec: FileSpectrum) -> "RunAccumulator":
        return cls(spec.run, spec.slice_len, spec.sample_rate_hz, np.zeros(spec.slice_len),
                   np.zeros(spec.slice_len))

    @property
    def n_files(self) -> int:
        return len(self.files)

    def fold(self, spec: FileSpectrum) -> bool:
        """Fold a file's spectrum into the run; False (and nothing changes) if it was folded before."""
        if spec.slice_len != self.slice_len or spec.sample_rate_hz != self.sample_rate_hz:
            raise StateError("inconsistent_run", f"{spec.run} file {spec.file_index}: "
                             f"{spec.slice_len} bins at {spec.sample_rate_hz} Hz, the run has "
                             f"{self.slice_len} bins at {self.sample_rate_hz} Hz")
        if not self.files.add(spec.file_index):
            self.duplicate_files += 1
            return False
        merged = self.moments.merge(dsp.Moments.from_std(spec.n_slices, spec.mean, spec.std))
        self.n_slices, self.mean, self.m2 = merged.n, merged.mean, merged.m2
        self.latest_file_index = spec.file_index if self.n_files == 1 else max(self.latest_file_index, spec.file_index)
        self.tail_samples_total += spec.tail_samples
        self.first_completed_at_s = min(self.first_completed_at_s, spec.completed_at_s)
        self.last_completed_at_s = max(self.last_completed_at_s, spec.completed_at_s)
        return True

    @property
    def moments(self) -> dsp.Moments:
        """The run's per-bin count, mean and M2 (the arrays are shared, not copied)."""
        return dsp.Moments(self.n_slices, self.mean, self.m2)

    @property
    def std(self) -> np.ndarray:
        """Scatter of one slice's periodogram per bin, sample std (ddof=1), V**2/Hz; NaN if N < 2."""
        return self.moments.std()

    @property
    def sem(self) -> np.ndarray:
        """Standard error of the run mean per bin, sigma/sqrt(N) (V**2/Hz); NaN if N < 2."""
        return self.moments.sem()

    def to_bytes(self) -> bytes:
        run = self.run.encode()
        bounds = self.files.bounds()
        head = _RUN_HEAD.pack(_RUN_MAGIC, 1, len(run), self.slice_len, bounds.shape[0], self.n_files,
                              self.n_slices, self.latest_file_index, self.duplicate_files,
                              self.tail_samples_total, self.sample_rate_hz,
                              self.first_completed_at_s, self.last_completed_at_s)
        return b"".join((head, run, bounds.astype("<u4").tobytes(), self.mean.astype("<f8").tobytes(),
                         self.m2.astype("<f8").tobytes()))

    @classmethod
    def from_bytes(cls, data: bytes) -> "RunAccumulator":
        """Read a ``runs`` table value (``to_bytes``); StateError ``bad_table_value`` if it is not one."""
        what = "runs table value"
        if len(data) < _RUN_HEAD.size:
            raise _bad_value(what, f"{len(data)} bytes, shorter than the {_RUN_HEAD.size}-byte header")
        (magic, version, run_len, slice_len, n_intervals, n_files, n_slices, latest, duplicates,
         tail_total, rate, first_at, last_at) = _RUN_HEAD.unpack_from(data)
        if magic != _RUN_MAGIC or version != 1:
            raise _bad_value(what, f"magic {magic!r} version {version}: not a version-1 run accumulator "
                             f"({_RUN_MAGIC!r})")
        expected = _RUN_HEAD.size + run_len + 8 * n_intervals + 2 * 8 * slice_len
        if len(data) != expected:
            raise _bad_value(what, f"{len(data)} bytes, expected {expected} ({_RUN_HEAD.size} header + "
                             f"{run_len} run id + {n_intervals} file intervals + mean and M2 of {slice_len} bins)")
        offset = _RUN_HEAD.size
        run = _decode_run(what, data[offset: offset + run_len])
        what = f"runs table value of {run!r}"
        offset += run_len
        bounds = np.frombuffer(data, "<u4", 2 * n_intervals, offset).astype(np.int64)
        offset += 8 * n_intervals
        if not (np.all(bounds[0::2] < bounds[1::2]) and np.all(bounds[2::2] >= bounds[1:-1:2])):
            raise _bad_value(what, f"file intervals {bounds.reshape(-1, 2).tolist()[:8]} are not sorted and disjoint")
        files = IndexSet(bounds)
        if len(files) != n_files:
            raise _bad_value(what, f"{n_files} files, but its intervals hold {len(files)}")
        arr = np.frombuffer(data, "<f8", 2 * slice_len, offset).reshape(2, slice_len)
        if not np.isfinite(arr).all():
            raise _bad_value(what, "mean or M2 holds NaN or Inf")
        return cls(run, slice_len, rate, arr[0].copy(), arr[1].copy(), files, n_slices,
                   latest, duplicates, tail_total, first_at, last_at)
