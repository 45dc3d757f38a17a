"""The batch job: recompute a run from its archived topic, write Parquet and the export .npz.

``--from slices``: the full recompute (decode, FFT, per-file sums, run average) from topic slices.
``--from spectra``: the run average from the per-file spectra topic (cheap).

Output directory:
    files.parquet/  one row per file seen (fold.FILE_SCHEMA), incomplete ones too
    run.parquet/    one row: the run average (mean, std, sem per bin) and its counts
    run.npz         the layout of ``quax export`` (quax_faust/export.py fetch_run)
    report.json     offsets read, malformed records, duplicates, incomplete files, timing
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema

from quax_faust import dsp, wire
from quax_faust.settings import Settings

from . import archive, fold
from .session import get_session

SOURCES = ("slices", "spectra")
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
        doc = {k: v for k, v in asdict(self).items() if k != "data"}
        doc["offsets"] = {str(p): list(b) for p, b in self.offsets.items()}
        doc.update(n_files=self.n_files, n_slices=self.n_slices, n_malformed=self.n_malformed,
                   realtime_factor=self.realtime_factor)
        return doc

    def summary(self) -> str:
        lines = [f"run {self.run} from topic {self.topic} ({self.source}): {self.n_files} complete "
                 f"files, {self.n_slices} slices, {self.data_seconds:.1f} s of data in "
                 f"{self.wall_seconds:.1f} s = {self.realtime_factor:.2f}x real time",
                 f"  {self.n_messages} records, {self.duplicate_slices} duplicate slices ignored, "
                 f"{len(self.incomplete_files)} incomplete files, {self.n_malformed} malformed records"]
        lines += [f"  malformed: {n} x {reason}" for reason, n in sorted(self.malformed.items())]
        lines += [f"    {e['partition']}@{e['offset']}: {e['error']}" for e in self.malformed_examples[:5]]
        lines += [f"  incomplete: file {f['file_index']}: {f['n_slices']}/{f['slices_in_file']} slices"
                  + (f" ({f['problem']})" if f["problem"] else "") for f in self.incomplete_files[:10]]
        return "\n".join(lines)


def reprocess(settings: Settings, run: str, source: str = "slices", out: Path | None = None, *,
              spark: SparkSession | None = None, conf: dict[str, str] | None = None) -> ReprocessResult:
    """Recompute run from the archived ``source`` topic ('slices' or 'spectra'); write to out."""
    wire.check_run_id(run)
    if source not in SOURCES:
        raise ValueError(f"source {source!r}: expected one of {', '.join(SOURCES)}")
    spark = spark or get_session(settings, conf)
    started = time.monotonic()
    topic = settings.slices_topic if source == "slices" else settings.spectra_topic
    bounds = archive.topic_bounds(settings, topic)
    if source == "slices":
        records = archive.read_topic(spark, settings, topic, bounds, lambda key: key.startswith(f"{run}/"))
        folder = fold.fold_slices(run, block_rows=settings.fft_block_rows, threads=settings.fft_threads)
    else:
        records = archive.read_topic(spark, settings, topic, bounds, lambda key: key == run)
        folder = fold.fold_spectra(run)

    parts = records.mapInArrow(folder, from_arrow_schema(fold.PART_SCHEMA))
    parts = parts.persist(StorageLevel.MEMORY_AND_DISK)  # the Kafka read and the FFTs happen once
    try:
        malformed_rows = [r.asDict() for r in parts.where(F.col("kind") == "malformed")
                          .select("partition", "offset", "reason", "error")
                          .orderBy("partition", "offset").collect()]
        files = (parts.where(F.col("kind") == "file").drop("kind", "reason", "error")
                 .groupBy("file_index").applyInArrow(fold.merge_file_parts, from_arrow_schema(fold.FILE_SCHEMA))
                 .persist(StorageLevel.MEMORY_AND_DISK))
        try:
            result = _collect(settings, run, source, topic, bounds, files, malformed_rows, out, started)
        finally:
            files.unpersist()
    finally:
        parts.unpersist()
    if out is not None:
        _write_local(result, Path(out))
    result.wall_seconds = time.monotonic() - started
    if out is not None:
        (Path(out) / "report.json").write_text(json.dumps(result.report(), indent=1, default=float))
    return result


def _collect(settings: Settings, run: str, source: str, topic: str, bounds, files: DataFrame,
             malformed_rows: list[dict], out: Path | None, started: float) -> ReprocessResult:
    if out is not None:
        files.withColumn("run", F.lit(run)).write.mode("overwrite").parquet(str(Path(out) / "files.parquet"))
    table = files.orderBy("file_index").toArrow()
    complete_mask = table.column("complete").to_numpy(zero_copy_only=False)
    incomplete = [{k: r[k] for k in ("file_index", "n_slices", "slices_in_file", "problem")}
                  for r in table.filter(pa.array(~complete_mask)).select(
                      ["file_index", "n_slices", "slices_in_file", "problem"]).to_pylist()]
    done = table.filter(pa.array(complete_mask))
    run_parts = [r.asDict() for r in files.where("complete").mapInArrow(
        fold.run_moments, from_arrow_schema(fold.RUN_PART_SCHEMA)).collect()]
    n_total, run_mean, run_m2 = fold.merge_run_parts(run_parts)
    slice_len = int(done.column("slice_len")[0].as_py())
    sample_rate_hz = float(done.column("sample_rate_hz")[0].as_py())
    n_files = done.num_rows
    file_mean = _matrix(done.column("mean"), n_files, slice_len)
    file_std = _matrix(done.column("std"), n_files, slice_len)
    data = {
        "frequency_hz": dsp.frequency_axis_hz(slice_len, sample_rate_hz, settings.lo_frequency_hz),
        "run_mean": run_mean,
        "run_sem": dsp.standard_error(run_m2, n_total),
        "run_std": np.sqrt(run_m2 / (n_total - 1)) if n_total > 1 else np.full(slice_len, np.nan),
        "n_slices_total": np.int64(n_total),
        "file_index": done.column("file_index").to_numpy().astype(np.int64),
        "file_mean": file_mean,
        "file_std": file_std,
        "file_n_slices": done.column("n_slices").to_numpy().astype(np.int64),
        "file_latency_s": done.column("latency_s").to_numpy(zero_copy_only=False).astype(np.float64),
        "run": np.array(run),
    }
    tails = int(sum(done.column("tail_samples").to_pylist()))
    return ReprocessResult(
        run=run, source=source, topic=topic, offsets=dict(bounds), data=data,
        malformed=dict(Counter(r["reason"] for r in malformed_rows)),
        malformed_examples=malformed_rows[:MALFORMED_EXAMPLES], incomplete_files=incomplete,
        n_messages=int(sum(table.column("n_messages").to_pylist())),
        duplicate_slices=int(sum(table.column("duplicate_slices").to_pylist())),
        data_seconds=(n_total * slice_len + tails) / sample_rate_hz,
        wall_seconds=time.monotonic() - started)


def _matrix(column: pa.ChunkedArray, n_rows: int, n_cols: int) -> np.ndarray:
    """A list<double> column of equal-length rows as an (n_rows, n_cols) float64 array."""
    flat = column.combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return flat.astype(np.float64).reshape(n_rows, n_cols)


def _write_local(result: ReprocessResult, out: Path) -> None:
    """run.npz (the export layout) and run.parquet (one row) beside files.parquet."""
    from quax_faust.export import write_export

    out.mkdir(parents=True, exist_ok=True)
    write_export(result.data, out / "run.npz")
    d = result.data
    row = {"run": result.run, "source": result.source, "n_files": result.n_files,
           "n_slices": result.n_slices, "data_seconds": result.data_seconds,
           "frequency_hz": d["frequency_hz"], "mean": d["run_mean"], "std": d["run_std"],
           "sem": d["run_sem"], "file_index": d["file_index"]}
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([row]), out / "run.parquet")
