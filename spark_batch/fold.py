"""What runs inside the Spark tasks: decode records and fold them into per-file and per-run sums.

Pure Python on pyarrow record batches (no pyspark import), so the same functions are unit-tested
without Spark. Each function is handed to ``mapInArrow`` / ``applyInArrow`` by ``job.py``. The
numbers come from ``recompute`` (scipy.fft, float64 sums): nothing here uses the live workers'
dsp or accumulators; from quax_faust only the message decoder (wire) is imported.

Counting each slice once, by (run, file_index, slice_index). Every valid slice message of a file
carries the key ``run/file``, so all of a file's messages sit in one Kafka partition, and Spark's
Kafka source gives each partition's offset range to one task, in offset order. ``fold_slices``
keeps, per task, one ``recompute.FileSums`` per file, a mask of the slice indices counted: the
first copy of a slice (lowest offset) counts, repeats are counted as duplicates, partial overlaps
count only their new slices. The per-file reduction (``merge_file_parts``) ORs the parts' masks and
refuses (``problem='overlapping_parts'``) a file whose parts from different tasks overlap, so a
double count can never pass silently.

All spectra are fftshifted, in V**2/Hz, float64, shape (slice_len,).
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa

from quax_faust.core import wire

from . import recompute
from .recompute import FileSums, RecordError

SPECTRUM = pa.list_(pa.float64())

PART_SCHEMA = pa.schema([
    ("kind", pa.string()),                # "file" (a part of a file's sums) or "malformed"
    ("partition", pa.int32()),            # Kafka partition and offset: of the malformed record,
    ("offset", pa.int64()),               #   or of the file's first counted message
    ("reason", pa.string()),              # malformed: WireError/RecordError reason tag
    ("error", pa.string()),               # malformed: what was expected
    ("file_index", pa.int64()),
    ("slices_in_file", pa.int64()),
    ("slice_len", pa.int64()),
    ("tail_samples", pa.int64()),
    ("sample_rate_hz", pa.float64()),
    ("n_messages", pa.int64()),           # records folded into this part (repeats included)
    ("n_slices", pa.int64()),             # slices counted (each once)
    ("duplicate_slices", pa.int64()),     # slices seen again and not counted
    ("counted", pa.binary()),             # np.packbits of the (slices_in_file,) counted mask
    ("power_sum", SPECTRUM),              # sum of the counted periodograms (float64)
    ("power_sumsq", SPECTRUM),            # sum of their squares
    ("first_produced_at_s", pa.float64()),
    ("last_produced_at_s", pa.float64()),
    ("completed_at_s", pa.float64()),     # spectra: the live worker's clock; slices: NaN
    ("acquired_at_s", pa.float64()),      # when the DAQ acquired the file (Unix s), NaN: unknown
])

FILE_SCHEMA = pa.schema([
    ("file_index", pa.int64()),
    ("n_slices", pa.int64()),
    ("slices_in_file", pa.int64()),
    ("complete", pa.bool_()),             # every whole slice counted, no problem
    ("problem", pa.string()),             # null, 'overlapping_parts' or 'inconsistent_parts'
    ("slice_len", pa.int64()),
    ("tail_samples", pa.int64()),
    ("sample_rate_hz", pa.float64()),
    ("n_messages", pa.int64()),
    ("duplicate_slices", pa.int64()),
    ("mean", SPECTRUM),                   # mean periodogram (Welch's average)
    ("std", SPECTRUM),                    # sample standard deviation (ddof=1) per bin
    ("first_produced_at_s", pa.float64()),
    ("last_produced_at_s", pa.float64()),
    ("latency_s", pa.float64()),          # spectra: last slice sent -> spectrum complete; slices: NaN
    ("acquired_at_s", pa.float64()),      # the earliest known of its parts' (Unix s), NaN: unknown
])

RUN_PART_SCHEMA = pa.schema([
    ("n_files", pa.int64()),
    ("n_slices", pa.int64()),
    ("tail_samples", pa.int64()),
    ("power_sum", SPECTRUM),              # sum of the periodograms of every counted slice
    ("power_sumsq", SPECTRUM),            # sum of their squares
])


def binary_values(column: pa.Array) -> list[memoryview | None]:
    """The values of a binary Arrow column as zero-copy memoryviews (None for nulls)."""
    large = pa.types.is_large_binary(column.type)
    if not (large or pa.types.is_binary(column.type)):
        raise TypeError(f"expected a binary column, got {column.type}")
    _, offsets_buf, data_buf = column.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int64 if large else np.int32)
    offsets = offsets[column.offset: column.offset + len(column) + 1]
    data = memoryview(data_buf) if data_buf is not None else memoryview(b"")
    valid = column.is_valid().to_numpy(zero_copy_only=False)
    return [data[offsets[i]: offsets[i + 1]] if valid[i] else None for i in range(len(column))]


def _records(batch: pa.RecordBatch) -> Iterator[tuple[bytes | None, memoryview | None, int, int]]:
    keys = batch.column("key").to_pylist()
    values = binary_values(batch.column("value"))
    partitions = batch.column("partition").to_pylist()
    offsets = batch.column("offset").to_pylist()
    return zip(keys, values, partitions, offsets)


def _malformed(partition: int, offset: int, exc: Exception) -> dict:
    return {"kind": "malformed", "partition": partition, "offset": offset,
            "reason": getattr(exc, "reason", type(exc).__name__), "error": str(exc)[:500]}


def _to_batch(rows: list[dict], schema: pa.Schema) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist(rows, schema=schema)


def _require_value(value: memoryview | None) -> memoryview:
    if value is None:
        raise wire.WireError("null_value", "the record has no value (a tombstone?)")
    return value


class SliceFiles:
    """One task's files: the slice indices counted per file, their sums, where and how often seen."""

    def __init__(self, run: str, workers: int):
        self.run = run
        self.workers = workers
        self.files: dict[int, FileSums] = {}
        self.first_seen: dict[int, tuple[int, int]] = {}
        self.messages: dict[int, int] = {}
        self.emitted: set[int] = set()

    def fold(self, key: bytes | None, value: memoryview | None, partition: int, offset: int) -> dict | None:
        """Fold one record; return a finished file's row when this record completed it."""
        message = wire.decode_slice_batch(_require_value(value))
        expected_key = wire.file_key(message.run, message.file_index)
        if key != expected_key or message.run != self.run:
            raise wire.WireError("key_mismatch", f"key {key!r} but the message is {expected_key!r}")
        index = message.file_index
        sums = self.files.get(index)
        if sums is None:
            sums = self.files[index] = FileSums.for_message(index, message)
            self.first_seen[index] = (partition, offset)
        sums.add(message, workers=self.workers)
        self.messages[index] = self.messages.get(index, 0) + 1
        if index in self.emitted or not sums.complete:
            return None
        row = self._row(sums)
        sums.release()  # its row is out; later repeats change nothing but the repeat counts
        self.emitted.add(index)
        sums.duplicate_slices = 0
        self.messages[index] = 0
        return row

    def leftovers(self) -> list[dict]:
        """Rows for files still filling at the end of the task, and for repeats of finished files."""
        rows = []
        for index, sums in sorted(self.files.items()):
            if index not in self.emitted and sums.n_slices:
                rows.append(self._row(sums))
            elif index in self.emitted and self.messages.get(index):
                rows.append(self._row(sums, repeats_only=True))
        return rows

    def _row(self, sums: FileSums, repeats_only: bool = False) -> dict:
        partition, offset = self.first_seen[sums.file_index]
        counted = np.zeros_like(sums.counted) if repeats_only else sums.counted
        return {
            "kind": "file", "partition": partition, "offset": offset,
            "file_index": sums.file_index, "slices_in_file": sums.slices_in_file,
            "slice_len": sums.slice_len, "tail_samples": sums.tail_samples,
            "sample_rate_hz": sums.sample_rate_hz, "n_messages": self.messages.get(sums.file_index, 0),
            "n_slices": 0 if repeats_only else sums.n_slices,
            "duplicate_slices": sums.duplicate_slices,
            "counted": np.packbits(counted).tobytes(),
            "power_sum": None if repeats_only else sums.power_sum,
            "power_sumsq": None if repeats_only else sums.power_sumsq,
            "first_produced_at_s": sums.first_produced_at_s,
            "last_produced_at_s": sums.last_produced_at_s,
            "completed_at_s": float("nan"),
            "acquired_at_s": sums.acquired_at_s,
        }


class SpectraFiles:
    """One task's file spectra: the first copy of each file in offset order, and its repeats."""

    def __init__(self, run: str):
        self.run = run
        self.first: dict[int, dict] = {}  # file -> the first copy's row without its spectra

    def fold(self, key: bytes | None, value: memoryview | None, partition: int, offset: int) -> dict | None:
        """Fold one record; return its row when it is the file's first copy."""
        spec = wire.decode_file_spectrum(_require_value(value))
        if key != spec.run.encode() or spec.run != self.run:
            raise wire.WireError("key_mismatch", f"key {key!r} but the spectrum is of run {spec.run!r}")
        seen = self.first.get(spec.file_index)
        if seen is not None:
            seen["n_messages"] += 1
            seen["duplicate_slices"] += spec.n_slices
            return None
        row = _spectrum_row(spec, partition, offset)
        self.first[spec.file_index] = {**row, "power_sum": None, "power_sumsq": None, "n_messages": 0,
                                       "n_slices": 0, "counted": bytes(len(row["counted"]))}
        return row

    def leftovers(self) -> list[dict]:
        """One row per repeated file, counting its later copies."""
        return [row for _, row in sorted(self.first.items()) if row["n_messages"]]


def fold_task(files, batches: Iterable[pa.RecordBatch], schema: pa.Schema = PART_SCHEMA) -> Iterator[pa.RecordBatch]:
    """Fold a task's records into ``files`` (anything with fold(key, value, partition, offset) ->
    row or None, and leftovers() -> rows): its rows as they come, a malformed row per record it
    refuses (WireError/RecordError), and its leftovers at the end."""
    for batch in batches:
        rows = []
        for key, value, partition, offset in _records(batch):
            try:
                row = files.fold(key, value, partition, offset)
            except (wire.WireError, RecordError) as exc:
                row = _malformed(partition, offset, exc)
            if row is not None:
                rows.append(row)
        if rows:
            yield _to_batch(rows, schema)
    rows = files.leftovers()
    if rows:
        yield _to_batch(rows, schema)


def fold_slices(run: str, *, workers: int = 1) -> Callable[[Iterable[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """A mapInArrow function: records (key, value, partition, offset) of the slices topic in
    offset order -> PART_SCHEMA rows: one per finished file, one per malformed record, and at the
    end one per unfinished file or file repeated after it finished. ``workers``: scipy.fft threads."""
    return lambda batches: fold_task(SliceFiles(run, workers), batches)


def fold_spectra(run: str) -> Callable[[Iterable[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """A mapInArrow function: records of the spectra topic -> PART_SCHEMA rows: a file's first
    spectrum in offset order as it comes, one per malformed record, and at the end one row per
    repeated file counting its later copies (as the live run table, which folds a file once)."""
    return lambda batches: fold_task(SpectraFiles(run), batches)


def _spectrum_row(spec: wire.FileSpectrum, partition: int, offset: int) -> dict:
    """A finished file as sums: power_sum = n*mean, power_sumsq = (n-1)*std**2 + n*mean**2."""
    n = spec.n_slices
    power_sum, power_sumsq = recompute.sums_from_mean_and_std(n, spec.mean, spec.std)
    return {
        "kind": "file", "partition": partition, "offset": offset, "file_index": spec.file_index,
        "slices_in_file": n, "slice_len": spec.slice_len, "tail_samples": spec.tail_samples,
        "sample_rate_hz": spec.sample_rate_hz, "n_messages": 1, "n_slices": n, "duplicate_slices": 0,
        "counted": np.packbits(np.ones(n, dtype=bool)).tobytes(),
        "power_sum": power_sum, "power_sumsq": power_sumsq,
        "first_produced_at_s": spec.first_produced_at_s, "last_produced_at_s": spec.last_produced_at_s,
        "completed_at_s": spec.completed_at_s, "acquired_at_s": spec.acquired_at_s,
    }


def merge_file_parts(parts: pa.Table) -> pa.Table:
    """An applyInArrow function over the parts of ONE file -> one FILE_SCHEMA row.

    Parts from different tasks cover disjoint slices (their bitmaps are ORed). Parts that overlap
    are repeats of the file only where one of them alone holds every slice (a repeated spectrum on
    the spectra topic, or a re-sent file, read in another task): the first whole part in
    (partition, offset) order is the file, as the live run table keeps the first copy, and the
    others' slices are duplicates. Any other overlap, or parts that disagree on the file's shape,
    give the file a ``problem``: it is not complete.
    """
    rows = sorted(parts.to_pylist(), key=lambda r: (r["partition"], r["offset"]))
    head = rows[0]
    shape = ("slices_in_file", "slice_len", "tail_samples", "sample_rate_hz")
    problem = None
    if any(tuple(r[k] for k in shape) != tuple(head[k] for k in shape) for r in rows):
        problem = "inconsistent_parts"
    n_bins, n_total = head["slice_len"], head["slices_in_file"]
    counting = [] if problem else [r for r in rows if r["power_sum"] is not None]
    masks = [np.unpackbits(np.frombuffer(r["counted"], np.uint8))[:n_total].astype(bool) for r in counting]
    repeated = 0
    overlap = bool(masks) and sum(int(m.sum()) for m in masks) > int(np.logical_or.reduce(masks).sum())
    if overlap:
        whole = [k for k, m in enumerate(masks) if m.all()]
        if whole:
            repeated = sum(r["n_slices"] for k, r in enumerate(counting) if k != whole[0])
            counting = [counting[whole[0]]]
        else:
            problem, counting = "overlapping_parts", []
    power_sum, power_sumsq = np.zeros(n_bins), np.zeros(n_bins)
    n_slices = 0
    for r in counting:
        power_sum += np.asarray(r["power_sum"])
        power_sumsq += np.asarray(r["power_sumsq"])
        n_slices += r["n_slices"]
    mean = std = None
    if n_slices and not problem:
        mean, std = recompute.mean_and_std(n_slices, power_sum, power_sumsq)
    latency = [r["completed_at_s"] - r["last_produced_at_s"] for r in counting or rows if r["power_sum"] is not None]
    row = {
        "file_index": head["file_index"], "n_slices": n_slices, "slices_in_file": n_total,
        "complete": problem is None and n_slices == n_total, "problem": problem,
        "slice_len": n_bins, "tail_samples": head["tail_samples"],
        "sample_rate_hz": head["sample_rate_hz"],
        "n_messages": sum(r["n_messages"] for r in rows),
        "duplicate_slices": sum(r["duplicate_slices"] for r in rows) + repeated,
        "mean": mean, "std": std,
        "first_produced_at_s": min(r["first_produced_at_s"] for r in rows),
        "last_produced_at_s": max(r["last_produced_at_s"] for r in rows),
        "latency_s": latency[0] if latency else float("nan"),
        # As the live file table: the earliest acquisition time known (NaN, or null, is unknown).
        "acquired_at_s": float(np.fmin.reduce([np.nan if r["acquired_at_s"] is None else r["acquired_at_s"]
                                               for r in rows])),
    }
    return pa.Table.from_pylist([row], schema=FILE_SCHEMA)


def run_sums(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """A mapInArrow function over complete FILE_SCHEMA rows -> one RUN_PART_SCHEMA row per task:
    the sums of P and P**2 over every slice of its files, back from each file's mean and std."""
    n = n_files = tail = 0
    power_sum = power_sumsq = None
    for batch in batches:
        for r in batch.to_pylist():
            s1, s2 = recompute.sums_from_mean_and_std(r["n_slices"], r["mean"], r["std"])
            if power_sum is None:
                power_sum, power_sumsq = np.zeros_like(s1), np.zeros_like(s2)
            power_sum += s1
            power_sumsq += s2
            n += r["n_slices"]
            n_files += 1
            tail += r["tail_samples"]
    if n_files:
        yield _to_batch([{"n_files": n_files, "n_slices": n, "tail_samples": tail,
                          "power_sum": power_sum, "power_sumsq": power_sumsq}], RUN_PART_SCHEMA)


def merge_run_parts(parts: list[dict]) -> tuple[int, np.ndarray, np.ndarray]:
    """(n_slices, sum of P, sum of P**2) of the run from the tasks' RUN_PART_SCHEMA rows (in the
    driver); recompute.run_statistics turns them into mean, std and sem."""
    if not parts:
        raise ValueError("no complete file to average: the run is not in the topic, or none of its "
                         "files has all its whole slices there")
    n = sum(p["n_slices"] for p in parts)
    power_sum = np.sum([np.asarray(p["power_sum"]) for p in parts], axis=0)
    power_sumsq = np.sum([np.asarray(p["power_sumsq"]) for p in parts], axis=0)
    return n, power_sum, power_sumsq
