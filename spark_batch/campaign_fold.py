"""What runs inside the Spark tasks of a campaign: many runs folded in ONE pass over a topic.

The same per-file and per-run folding as ``fold`` (each slice counted once, first copy wins,
malformed records reported), with every row tagged by its run, so one read of the archive serves
a whole campaign (``campaign.reprocess_runs``):

    records --fold_runs (per task: a fold.SliceFiles/SpectraFiles per run)--> parts + "held" counts
        --groupBy(run, file_index): merge_run_file_parts--> one row per file of each run
        --runs_sums (per task, per run)--> groupBy(run): merge_runs_sums--> each run's sums of P, P**2

A record's run is read from its key (slices: ``run/file_index``, wire.file_key; spectra: ``run``).
Records of runs not wanted are not decoded, only counted (kind "held"), so the driver knows which
runs the archive holds. Pure Python on pyarrow batches (no pyspark import), unit-tested without Spark.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from quax_faust.core import wire

from . import fold
from .recompute import RecordError

RUN = pa.field("run", pa.string())
RUN_PARTS_SCHEMA = fold.PART_SCHEMA.insert(0, RUN)
"""fold.PART_SCHEMA with the run; kind "held": n_messages records of the run read in the task."""
RUN_FILE_SCHEMA = fold.FILE_SCHEMA.insert(0, RUN)
RUN_SUMS_SCHEMA = fold.RUN_PART_SCHEMA.insert(0, RUN)
SLICES_KEY = re.compile(rb"^(.+)/[0-9]+$")
"""Key of a slice message: run/file_index (wire.file_key)."""


def run_of_key(key: bytes | None, source: str) -> str | None:
    """The run a record's key names ('slices': run/file_index, 'spectra': run); None if it names
    no valid run id."""
    if key is None:
        return None
    if source == "slices":
        match = SLICES_KEY.match(key)
        if match is None:
            return None
        key = match.group(1)
    try:
        return wire.check_run_id(key.decode())
    except (UnicodeDecodeError, ValueError):
        return None


class ByRun:
    """One task's files of every wanted run (``runs`` None: every run), one fold.SliceFiles or
    fold.SpectraFiles per run, and the records read per run (wanted or not)."""

    def __init__(self, source: str, runs: Collection[str] | None, make_files: Callable[[str], object]):
        self.source = source
        self.runs = None if runs is None else frozenset(runs)
        self.make_files = make_files
        self.files: dict[str, object] = {}
        self.held: dict[str, int] = {}

    def fold(self, key: bytes | None, value, partition: int, offset: int) -> dict | None:
        """Fold one record into its run's files; a malformed record's row names its run."""
        run = run_of_key(key, self.source)
        if run is None:
            raise wire.WireError("bad_key", f"key {bytes(key or b'')[:80]!r} names no run")
        self.held[run] = self.held.get(run, 0) + 1
        if self.runs is not None and run not in self.runs:
            return None  # another run's record: counted, not decoded (its value is not sent: campaign.py)
        files = self.files.get(run)
        if files is None:
            files = self.files[run] = self.make_files(run)
        try:
            row = files.fold(key, value, partition, offset)
        except (wire.WireError, RecordError) as exc:
            row = fold._malformed(partition, offset, exc)
        return None if row is None else {**row, "run": run}

    def leftovers(self) -> list[dict]:
        rows = [{**row, "run": run} for run, files in sorted(self.files.items()) for row in files.leftovers()]
        return rows + [{"kind": "held", "run": run, "n_messages": n} for run, n in sorted(self.held.items())]


def fold_runs(source: str, runs: Collection[str] | None, *, workers: int = 1
              ) -> Callable[[Iterable[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """A mapInArrow function: records of topic ``source`` ('slices' or 'spectra') -> RUN_PARTS_SCHEMA
    rows of the wanted runs (as fold.fold_slices / fold.fold_spectra, tagged by run; a record
    whose key names no run is malformed with run null), and per run the records read ("held")."""
    if source == "slices":
        def make(run: str):
            return fold.SliceFiles(run, workers)
    elif source == "spectra":
        make = fold.SpectraFiles
    else:
        raise ValueError(f"source {source!r}: expected slices or spectra")
    return lambda batches: fold.fold_task(ByRun(source, runs, make), batches, RUN_PARTS_SCHEMA)


def merge_run_file_parts(parts: pa.Table) -> pa.Table:
    """An applyInArrow function over the parts of ONE file of one run -> one RUN_FILE_SCHEMA row
    (fold.merge_file_parts)."""
    run = parts.column("run")[0].as_py()
    row = fold.merge_file_parts(parts.drop_columns(["run"]))
    return row.add_column(0, RUN, pa.array([run] * row.num_rows, pa.string()))


def _add(total: dict | None, part: dict) -> dict:
    if total is None:
        return {**part, "power_sum": np.asarray(part["power_sum"], dtype=np.float64).copy(),
                "power_sumsq": np.asarray(part["power_sumsq"], dtype=np.float64).copy()}
    for name in ("n_files", "n_slices", "tail_samples"):
        total[name] += part[name]
    total["power_sum"] += np.asarray(part["power_sum"])
    total["power_sumsq"] += np.asarray(part["power_sumsq"])
    return total


def runs_sums(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """A mapInArrow function over complete RUN_FILE_SCHEMA rows -> one RUN_SUMS_SCHEMA row per run
    of the task (fold.run_sums of each run's files)."""
    totals: dict[str, dict] = {}
    for batch in batches:
        run_column = batch.column("run")
        for run in pc.unique(run_column).to_pylist():
            for sums in fold.run_sums([batch.filter(pc.equal(run_column, run))]):
                for part in sums.to_pylist():
                    totals[run] = _add(totals.get(run), part)
    if totals:
        yield pa.RecordBatch.from_pylist([{**t, "run": run} for run, t in sorted(totals.items())],
                                         schema=RUN_SUMS_SCHEMA)


def merge_runs_sums(parts: pa.Table) -> pa.Table:
    """An applyInArrow function over ONE run's RUN_SUMS_SCHEMA rows (from the tasks) -> one row."""
    total = None
    for part in parts.to_pylist():
        total = _add(total, part)
    return pa.Table.from_pylist([total], schema=RUN_SUMS_SCHEMA)
