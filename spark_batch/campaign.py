"""``quax reprocess-campaign``: a campaign's runs recomputed from the archive in ONE Spark pass.

The heavy part, every run's average, is one distributed read of the topic that folds all the
wanted runs at once (campaign_fold: grouped by run, then by file, as ``quax reprocess`` folds one
run). The driver then holds one average per run ((slice_len,) float64: 24 KiB at 3072 bins) and
runs the campaign analysis of quax_faust.search on them, as ``quax campaign`` does on the live
tables: the grand spectrum of 100 runs is ~2.4 MB; it is the archive that is large.

Each run's metadata (LO, cavity) comes from the metadata topic, all runs in one read
(archive.runs_metadata), merged by the workers' rule.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pyspark import StorageLevel
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema

from quax_faust.core import wire
from quax_faust.search.run_excess import RunSpectrum
from quax_faust.settings import Settings

from . import archive, campaign_fold, fold, recompute
from .job import CACHE_BATCH_BYTES, MALFORMED_EXAMPLES, SOURCES
from .session import SHUFFLE_PARTITIONS

log = logging.getLogger("quax.spark")


@dataclass
class ArchivedRun:
    """One run as the pass found it: its average over its complete files, and what was left out."""

    run: str
    records: int
    """Records of the run read from the topic (repeats and malformed ones included)."""
    n_files: int = 0
    """Complete files in the average."""
    n_slices: int = 0
    sample_rate_hz: float = float("nan")
    mean: np.ndarray | None = field(default=None, repr=False)
    """(slice_len,) float64 mean periodogram over every slice of the complete files, V**2/Hz,
    fftshifted; None when no file of the run is complete."""
    n_messages: int = 0
    duplicate_slices: int = 0
    incomplete_files: list[dict] = field(default_factory=list)
    malformed: dict[str, int] = field(default_factory=dict)
    metadata: archive.RunMetadata = field(default_factory=archive.RunMetadata)

    @property
    def problem(self) -> str | None:
        """Why the run has no average (None: it has one)."""
        if self.mean is not None:
            return None
        return (f"no complete file in the archive ({self.records} records, "
                f"{len(self.incomplete_files)} incomplete files)")

    def counts(self) -> dict[str, Any]:
        return {"records": self.records, "n_files": self.n_files, "n_slices": self.n_slices,
                "duplicate_slices": self.duplicate_slices, "incomplete_files": len(self.incomplete_files),
                "malformed": self.malformed, "metadata_offsets": self.metadata.offsets}


@dataclass
class ArchivedRuns:
    """The runs of one pass over ``topic`` within ``offsets``."""

    source: str
    topic: str
    offsets: archive.Bounds
    tasks: int
    runs: dict[str, ArchivedRun]
    """The wanted runs, in the order asked (--all: by name)."""
    held: dict[str, int]
    """Every run the archive holds -> its records read."""
    unattributed: dict[str, int]
    """Malformed records whose key names no run, by reason."""
    malformed_examples: list[dict]
    wall_seconds: float = 0.0

    @property
    def source_label(self) -> str:
        """Where the campaign file says each run was read (runs_used/source)."""
        return f"spark: topic {self.topic}"

    def spectra(self) -> list[tuple[RunSpectrum, str]]:
        """The runs with an average, as the campaign analysis takes them."""
        return [(RunSpectrum(r.run, r.mean, r.n_slices, r.sample_rate_hz, r.metadata.fields), self.source_label)
                for r in self.runs.values() if r.mean is not None]

    def inputs(self, settings: Settings) -> dict[str, Any]:
        """The campaign file's "inputs": the topic and bounds read, and each run's counts."""
        return {"spark": {"topic": self.topic, "source": self.source, "tasks": self.tasks,
                          "offsets": {str(p): list(b) for p, b in self.offsets.items()},
                          "metadata_topic": settings.metadata_topic, "spark_master": settings.spark_master},
                "runs": list(self.runs), "archive": {run: r.counts() for run, r in self.runs.items()},
                "not_averaged": {run: r.problem for run, r in self.runs.items() if r.problem},
                "unattributed_malformed": self.unattributed}

    def summary(self) -> str:
        lines = [f"{len(self.runs)} runs from topic {self.topic} ({self.source}) in one pass of "
                 f"{self.tasks} read tasks, {self.wall_seconds:.1f} s"]
        for r in self.runs.values():
            lines.append(f"  {r.run}: {r.n_files} complete files, {r.n_slices} slices, {r.records} records, "
                         f"{r.duplicate_slices} duplicate slices, {len(r.incomplete_files)} incomplete files, "
                         f"{sum(r.malformed.values())} malformed" + (f": {r.problem}" if r.problem else ""))
            lines += [f"    malformed: {n} x {reason}" for reason, n in sorted(r.malformed.items())]
        lines += [f"  {n} malformed records name no run ({reason})" for reason, n in sorted(self.unattributed.items())]
        lines += [f"    {e['run'] or '(no run)'} at {e['partition']}@{e['offset']}: {e['error']}"
                  for e in self.malformed_examples[:5]]
        return "\n".join(lines)


def wanted_runs(runs: Sequence[str] | None) -> list[str] | None:
    """The runs asked for, checked: valid ids, none twice (ValueError naming them)."""
    if runs is None:
        return None
    for run in runs:
        wire.check_run_id(run)
    twice = sorted({run for run in runs if list(runs).count(run) > 1})
    if twice:
        raise ValueError(f"run {', '.join(twice)} given twice")
    return list(runs)


def check_held(runs: Sequence[str] | None, held: dict[str, int], topic: str) -> list[str]:
    """The runs to average (``runs`` None: every run the archive holds, by name); RuntimeError
    naming the runs asked for that the archive does not hold, and those it does."""
    names = sorted(held)
    shown = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
    if runs is None:
        if not names:
            raise RuntimeError(f"the archive (topic {topic}) holds no runs")
        return names
    unknown = [run for run in runs if run not in held]
    if unknown:
        raise RuntimeError(f"the archive (topic {topic}) holds no run {', '.join(map(repr, unknown))} "
                           f"(it holds {len(names)}: {shown or 'none'})")
    return list(runs)


def reprocess_runs(settings: Settings, runs: Sequence[str] | None, source: str = "slices", *,
                   spark: SparkSession, task_bytes: int = archive.TASK_BYTES) -> ArchivedRuns:
    """Every wanted run's average (``runs`` None: every run of the topic) from the archived
    ``source`` topic ('slices' or 'spectra') in one Spark pass, and each run's metadata."""
    runs = wanted_runs(runs)
    if source not in SOURCES:
        raise ValueError(f"source {source!r}: expected one of {', '.join(SOURCES)}")
    started = time.monotonic()
    topic = settings.slices_topic if source == "slices" else settings.spectra_topic
    bounds = archive.topic_bounds(settings, topic)
    record_bytes = (settings.slices_per_message * settings.slice_len * 8 if source == "slices"
                    else 2 * settings.slice_len * 8)  # complex64 samples; a file's mean and std, float64
    tasks = archive.read_tasks(bounds, record_bytes, task_bytes)
    records = archive.read_topic(spark, settings, topic, bounds, lambda key: F.lit(True), tasks=tasks,
                                 record_bytes=record_bytes)
    if runs is not None:  # other runs' records reach the tasks without their values: only counted
        key = F.col("key").cast("string")
        key_run = F.regexp_extract(key, r"^(.+)/[0-9]+$", 1) if source == "slices" else key
        records = records.withColumn("value", F.when(key_run.isin(runs), F.col("value")))
    spark.conf.set("spark.sql.shuffle.partitions", str(max(SHUFFLE_PARTITIONS, tasks)))
    spark.conf.set("spark.sql.inMemoryColumnarStorage.batchSize", str(max(1, CACHE_BATCH_BYTES // (2 * record_bytes))))
    folder = campaign_fold.fold_runs(source, runs, workers=settings.fft_threads)
    # The Kafka read and the FFTs happen once; on disk, as in job.reprocess.
    parts = records.mapInArrow(folder, from_arrow_schema(campaign_fold.RUN_PARTS_SCHEMA)).persist(StorageLevel.DISK_ONLY)
    try:
        held = {r["run"]: int(r["n"]) for r in parts.where(F.col("kind") == "held").groupBy("run")
                .agg(F.sum("n_messages").alias("n")).collect()}
        names = check_held(runs, held, topic)
        found = {run: ArchivedRun(run, held[run]) for run in names}
        bad = parts.where(F.col("kind") == "malformed")
        unattributed: Counter[str] = Counter()
        for r in bad.groupBy("run", "reason").count().collect():
            if r["run"] is None:
                unattributed[r["reason"]] += r["count"]
            else:
                found[r["run"]].malformed[r["reason"]] = r["count"]
        examples = [r.asDict() for r in bad.select("run", "partition", "offset", "reason", "error")
                    .orderBy("partition", "offset").limit(MALFORMED_EXAMPLES).collect()]
        _fold_files(parts, found)
    finally:
        parts.unpersist()
    for run, meta in archive.runs_metadata(settings, list(found)).items():
        found[run].metadata = meta
    return ArchivedRuns(source, topic, dict(bounds), tasks, found, held, dict(unattributed), examples,
                        time.monotonic() - started)


def _fold_files(parts, found: dict[str, ArchivedRun]) -> None:
    """Per file, then per run: each run's counts, incomplete files and average into ``found``."""
    files = (parts.where(F.col("kind") == "file").drop("kind", "reason", "error")
             .groupBy("run", "file_index")
             .applyInArrow(campaign_fold.merge_run_file_parts, from_arrow_schema(campaign_fold.RUN_FILE_SCHEMA))
             .persist(StorageLevel.DISK_ONLY))
    try:
        for r in files.groupBy("run").agg(
                F.sum("n_messages").alias("n_messages"), F.sum("duplicate_slices").alias("duplicate_slices"),
                F.min(F.when(F.col("complete"), F.col("sample_rate_hz"))).alias("rate_low"),
                F.max(F.when(F.col("complete"), F.col("sample_rate_hz"))).alias("rate_high")).collect():
            if r["rate_low"] != r["rate_high"]:
                raise RuntimeError(f"run {r['run']}: files at {r['rate_low']} and {r['rate_high']} Hz "
                                   "in the archive: one average needs one sample rate")
            run = found[r["run"]]
            run.n_messages, run.duplicate_slices = int(r["n_messages"]), int(r["duplicate_slices"])
            run.sample_rate_hz = float("nan") if r["rate_low"] is None else float(r["rate_low"])
        for r in (files.where(~F.col("complete")).select("run", "file_index", "n_slices", "slices_in_file", "problem")
                  .orderBy("run", "file_index").collect()):
            found[r["run"]].incomplete_files.append({k: r[k] for k in ("file_index", "n_slices", "slices_in_file", "problem")})
        sums = (files.where("complete")
                .mapInArrow(campaign_fold.runs_sums, from_arrow_schema(campaign_fold.RUN_SUMS_SCHEMA))
                .groupBy("run")
                .applyInArrow(campaign_fold.merge_runs_sums, from_arrow_schema(campaign_fold.RUN_SUMS_SCHEMA))
                .collect())
    finally:
        files.unpersist()
    for r in sums:
        run = found[r["run"]]
        n, power_sum, power_sumsq = fold.merge_run_parts([r.asDict()])
        run.mean = recompute.run_statistics(n, power_sum, power_sumsq)[0]
        run.n_slices, run.n_files = n, int(r["n_files"])
