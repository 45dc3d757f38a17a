"""The batch job: recompute a run from its archived topic, write Parquet and the export .npz.

``--from slices``: the full recompute (decode, FFT, per-file sums, run average) from topic slices.
``--from spectra``: the run average from the per-file spectra topic (cheap).

Output directory:
    files.parquet/  one row per file seen (fold.FILE_SCHEMA), incomplete ones too
    run.parquet     one row: the run average (mean, std, sem per bin) and its counts
    run.npz         the layout of ``quax export`` (quax_faust/client.py fetch_run), and "metadata":
                    JSON with the run's own metadata (run_metadata) and the LO of its frequency axis
    report.json     offsets read, malformed records, duplicates, incomplete files, timing, the run's
                    metadata and where its LO came from

The frequency axis is offset by the run's own LO, its recorded ``lo_frequency_hz`` (read by the
driver from the metadata topic, as the workers keep it); the ``lo_frequency_hz`` setting only for a
run with no LO recorded (produced before run metadata existed), and the report and log say so.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pyspark import StorageLevel
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema

from quax_faust.core import wire
from quax_faust.settings import Settings

from . import archive, export, fold, recompute
from .session import SHUFFLE_PARTITIONS, get_session

log = logging.getLogger("quax.spark")

SOURCES = ("slices", "spectra")
CACHE_BATCH_BYTES = 16 << 20
"""Size of one column batch of persisted rows (a row holds a file's sums: ~2 spectrum records)."""
MALFORMED_EXAMPLES = 20
"""Malformed records listed one by one in the report (all are counted)."""


@dataclass
class ReprocessResult:
    run: str
    source: str
    topic: str
    offsets: dict[int, tuple[int, int]]
    data: dict[str, np.ndarray] = field(repr=False)
    """The run in the layout of ``quax export``: frequency_hz, run_mean, ..., file_mean, ..."""
    malformed: dict[str, int]
    """Malformed records of this run by reason (WireError/StateError tags)."""
    malformed_examples: list[dict]
    incomplete_files: list[dict]
    """Files not in the average: some whole slices missing, or a problem (fold.merge_file_parts)."""
    n_messages: int
    duplicate_slices: int
    data_seconds: float
    """Detector time covered by the complete files (whole slices and dropped tails), s."""
    wall_seconds: float
    """From the offsets' resolution to the last output written (Spark session start excluded), s."""
    run_metadata: dict = field(default_factory=dict)
    """The run's own metadata as recorded on the metadata topic ({} if none)."""
    lo_frequency_hz: float = 0.0
    """The LO of the frequency axis, Hz."""
    lo_from: str = ""
    """Where the LO came from: the run's metadata (topic@offsets) or the setting (no LO recorded)."""
    tasks: int = 0
    """Spark tasks the topic was read in (archive.read_tasks)."""

    @property
    def n_files(self) -> int:
        return int(len(self.data["file_index"]))

    @property
    def n_slices(self) -> int:
        return int(self.data["n_slices_total"])

    @property
    def n_malformed(self) -> int:
        return sum(self.malformed.values())

    @property
    def realtime_factor(self) -> float:
        return self.data_seconds / self.wall_seconds if self.wall_seconds > 0 else float("nan")

    def report(self) -> dict:
        doc = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "data"}
        doc["offsets"] = {str(p): list(b) for p, b in self.offsets.items()}
        doc.update(n_files=self.n_files, n_slices=self.n_slices, n_malformed=self.n_malformed,
                   realtime_factor=self.realtime_factor)
        return doc

    def summary(self) -> str:
        lines = [f"run {self.run} from topic {self.topic} ({self.source}): {self.n_files} complete "
                 f"files, {self.n_slices} slices, {self.data_seconds:.1f} s of data in "
                 f"{self.wall_seconds:.1f} s = {self.realtime_factor:.2f}x real time ({self.tasks} read tasks)",
                 f"  frequency axis around LO {self.lo_frequency_hz:.9g} Hz, from the {self.lo_from}",
                 f"  {self.n_messages} records, {self.duplicate_slices} duplicate slices ignored, "
                 f"{len(self.incomplete_files)} incomplete files, {self.n_malformed} malformed records"]
        lines += [f"  malformed: {n} x {reason}" for reason, n in sorted(self.malformed.items())]
        lines += [f"    {e['partition']}@{e['offset']}: {e['error']}" for e in self.malformed_examples[:5]]
        lines += [f"  incomplete: file {f['file_index']}: {f['n_slices']}/{f['slices_in_file']} slices"
                  + (f" ({f['problem']})" if f["problem"] else "") for f in self.incomplete_files[:10]]
        return "\n".join(lines)


def reprocess(settings: Settings, run: str, source: str = "slices", out: Path | None = None, *,
              spark: SparkSession | None = None, conf: dict[str, str] | None = None,
              task_bytes: int = archive.TASK_BYTES) -> ReprocessResult:
    """Recompute run from the archived ``source`` topic ('slices' or 'spectra').

    The topic is read in tasks of about ``task_bytes`` of records (archive.read_tasks); a file
    whose records fall in several tasks is merged from their parts (fold.merge_file_parts).

    With ``out``, writes files.parquet, run.parquet, run.npz and report.json there; without, the
    per-file Parquet goes to a temporary directory that is removed (the result is returned only).
    """
    wire.check_run_id(run)
    if source not in SOURCES:
        raise ValueError(f"source {source!r}: expected one of {', '.join(SOURCES)}")
    spark = spark or get_session(settings, conf)
    started = time.monotonic()
    topic = settings.slices_topic if source == "slices" else settings.spectra_topic
    bounds = archive.topic_bounds(settings, topic)
    lo, recorded, lo_from = _run_lo(settings, run)
    if source == "slices":
        record_bytes = settings.slices_per_message * settings.slice_len * 8  # complex64 samples
        key_filter, folder = (lambda key: key.startswith(f"{run}/")), fold.fold_slices(run, workers=settings.fft_threads)
    else:
        record_bytes = 2 * settings.slice_len * 8  # a file's mean and std, float64
        key_filter, folder = (lambda key: key == run), fold.fold_spectra(run)
    tasks = archive.read_tasks(bounds, record_bytes, task_bytes)
    records = archive.read_topic(spark, settings, topic, bounds, key_filter, tasks=tasks, record_bytes=record_bytes)
    # The per-file shuffle as finely cut as the read: a file row is as large as a spectrum record.
    spark.conf.set("spark.sql.shuffle.partitions", str(max(SHUFFLE_PARTITIONS, tasks)))
    # Persisted rows are cached in column batches of 10,000 rows by default: 10,000 files' spectra
    # are ~1 GB, a whole driver heap (a week's --from spectra died of it). Batches of ~16 MiB.
    spark.conf.set("spark.sql.inMemoryColumnarStorage.batchSize", str(max(1, CACHE_BATCH_BYTES // (2 * record_bytes))))
    work = Path(out) if out is not None else export.scratch_dir(None)
    scratch = export.scratch_dir(work)  # memory maps of the per-file spectra
    try:
        parts = records.mapInArrow(folder, from_arrow_schema(fold.PART_SCHEMA))
        # The Kafka read and the FFTs happen once. On disk, not in memory: a week's parts (144,000
        # files' sums, 7 GB) in a 1 GiB heap ran it out of memory (docs/performance.md).
        parts = parts.persist(StorageLevel.DISK_ONLY)
        try:
            malformed_rows = [r.asDict() for r in parts.where(F.col("kind") == "malformed")
                              .select("partition", "offset", "reason", "error")
                              .orderBy("partition", "offset").collect()]
            files = (parts.where(F.col("kind") == "file").drop("kind", "reason", "error")
                     .groupBy("file_index")
                     .applyInArrow(fold.merge_file_parts, from_arrow_schema(fold.FILE_SCHEMA))
                     .persist(StorageLevel.DISK_ONLY))
            try:
                files.withColumn("run", F.lit(run)).write.mode("overwrite").parquet(str(work / "files.parquet"))
                run_parts = [r.asDict() for r in files.where("complete").mapInArrow(
                    fold.run_sums, from_arrow_schema(fold.RUN_PART_SCHEMA)).collect()]
            finally:
                files.unpersist()
        finally:
            parts.unpersist()
        result = _result(run, source, topic, bounds, work, scratch, run_parts, malformed_rows, started,
                         lo=lo, recorded=recorded, lo_from=lo_from)
        if out is not None:
            export.write_npz(result.data, work / "run.npz")
            _write_run_parquet(result, work / "run.parquet")
    finally:
        shutil.rmtree(work if out is None else scratch, ignore_errors=True)  # open maps stay valid
    result.wall_seconds = time.monotonic() - started
    result.tasks = tasks
    if out is not None:
        (work / "report.json").write_text(json.dumps(result.report(), indent=1, default=float))
    return result


def _run_lo(settings: Settings, run: str) -> tuple[float, dict, str]:
    """(LO in Hz, the run's metadata, where the LO came from): the run's recorded LO; the setting
    only for a run with none recorded, logged."""
    found = archive.run_metadata(settings, run)
    if "lo_frequency_hz" in found.fields:
        offsets = ",".join(str(o) for o in found.offsets)
        return float(found.fields["lo_frequency_hz"]), found.fields, f"run metadata ({settings.metadata_topic}@{offsets})"
    log.warning("run %s has no lo_frequency_hz on %s: its frequency axis uses the lo_frequency_hz "
                "setting, %g Hz", run, settings.metadata_topic, settings.lo_frequency_hz)
    return settings.lo_frequency_hz, found.fields, "setting lo_frequency_hz (no LO recorded for the run)"


def _result(run: str, source: str, topic: str, bounds, work: Path, scratch: Path, run_parts: list[dict],
            malformed_rows: list[dict], started: float, *, lo: float, recorded: dict,
            lo_from: str) -> ReprocessResult:
    small = export.read_file_table(work / "files.parquet")
    try:
        n_total, power_sum, power_sumsq = fold.merge_run_parts(run_parts)
    except ValueError as exc:
        raise RuntimeError(f"run {run!r} in topic {topic!r} at offsets {bounds}: {exc}") from None
    run_mean, run_std, run_sem = recompute.run_statistics(n_total, power_sum, power_sumsq)
    data = export.arrays(work / "files.parquet", small, scratch, run=run, n_slices=n_total,
                         run_mean=run_mean, run_std=run_std, run_sem=run_sem,
                         lo_frequency_hz=lo)
    data["metadata"] = np.array(json.dumps({"run": run, "lo_frequency_hz": lo, "lo_from": lo_from,
                                            "run_metadata": recorded}))  # as quax export's "metadata"
    complete = small.column("complete").to_numpy(zero_copy_only=False)
    incomplete = small.filter(pa.array(~complete)).select(
        ["file_index", "n_slices", "slices_in_file", "problem"]).to_pylist()
    slice_len = data["file_mean"].shape[1]
    rate = float(small.column("sample_rate_hz")[0].as_py())
    tails = int(sum(small.filter(pa.array(complete)).column("tail_samples").to_pylist()))
    return ReprocessResult(
        run=run, source=source, topic=topic, offsets=dict(bounds), data=data,
        malformed=dict(Counter(r["reason"] for r in malformed_rows)),
        malformed_examples=malformed_rows[:MALFORMED_EXAMPLES], incomplete_files=incomplete,
        n_messages=int(sum(small.column("n_messages").to_pylist())),
        duplicate_slices=int(sum(small.column("duplicate_slices").to_pylist())),
        data_seconds=(n_total * slice_len + tails) / rate,
        wall_seconds=time.monotonic() - started, run_metadata=recorded, lo_frequency_hz=lo, lo_from=lo_from)


def _write_run_parquet(result: ReprocessResult, path: Path) -> None:
    """One row: the run average per bin and its counts."""
    d = result.data
    row = {"run": result.run, "source": result.source, "n_files": result.n_files,
           "n_slices": result.n_slices, "data_seconds": result.data_seconds,
           "frequency_hz": d["frequency_hz"], "mean": d["run_mean"], "std": d["run_std"],
           "sem": d["run_sem"], "file_index": d["file_index"]}
    pq.write_table(pa.Table.from_pylist([row]), path)
