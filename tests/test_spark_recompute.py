"""The Spark audit is an independent implementation of the spectrum's definition (no Spark here).

spark_batch/recompute.py and the task functions of spark_batch/fold.py must (1) import nothing of
the live chain's numerics (quax_faust.core.dsp, quax_faust.core.accumulators, pyfftw), and (2) equal
scipy.signal.welch / scipy.signal.spectrogram directly, slice for slice, whatever duplicated or
partially overlapping slice messages the archive holds.
"""

from __future__ import annotations

import ast
import dataclasses
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet  # noqa: F401  (pa.parquet)
import pytest
import scipy.signal

from quax_faust.core import wire
from spark_batch import fold, recompute
from spark_batch.recompute import FileSums, RecordError

REPO = Path(__file__).resolve().parents[1]
FS, L, TAIL = 1e3, 64, 5
LIVE_NUMERICS = {"quax_faust.core.dsp", "quax_faust.core.accumulators", "pyfftw"}


# ------------------------------------------------------------------------------------------------
# Independence: what spark_batch imports

def _imports(path: Path) -> set[str]:
    """Modules a source file imports (absolute names; 'from pkg import mod' gives pkg.mod)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


ALLOWED_LIVE = {"quax_faust.core.wire", "quax_faust.core.errors", "quax_faust.core.run_meta", "quax_faust.settings"}
"""All that spark_batch may take from the live package: the message decoder (and its error type),
the run metadata record's decoder (read by the driver: the run's LO) and the settings."""
CONNECTION_ONLY = {
    "archive.py": {"quax_faust.connection"},  # how to log in to the broker
    "cli.py": {"quax_faust.client"},  # fetch_run: reading the live tables, the side being audited
}
"""Live modules that compute no spectrum, allowed where named (they import no dsp: checked below)."""


DRIVER_ANALYSIS = {"campaign.py", "cli.py"}
"""`quax reprocess-campaign` runs the campaign analysis (quax_faust.search, its file by quax_faust.exports)
on the driver after the recompute: the same physics as `quax campaign`, on averages the audit recomputed
itself. No task imports them (campaign_fold.py is clean, checked below)."""


def test_spark_batch_imports_nothing_of_the_live_numerics():
    seen = {}
    for path in sorted((REPO / "spark_batch").glob("*.py")):
        live = {n for n in _imports(path) if n == "pyfftw" or n.startswith("quax_faust")}
        if path.name in DRIVER_ANALYSIS:
            live = {n for n in live if not n.startswith(("quax_faust.search", "quax_faust.exports"))}
        live = {n for n in live if n not in {"quax_faust", "quax_faust.core"} and not any(n.startswith(f"{m}.") for m in ALLOWED_LIVE)}
        live = {n.rsplit(".", 1)[0] if n.rsplit(".", 1)[0] in CONNECTION_ONLY.get(path.name, set()) else n
                for n in live}  # "quax_faust.client.fetch_run" -> its module
        seen[path.name] = live - ALLOWED_LIVE - CONNECTION_ONLY.get(path.name, set())
    assert seen.get("recompute.py") == set() and seen.get("fold.py") == set() and seen.get("campaign_fold.py") == set()
    assert not {name: extra for name, extra in seen.items() if extra}, "spark_batch imports live code"


def test_running_the_audit_loads_no_live_numerics():
    """In a fresh interpreter: every spark_batch module, the live-table reader, and a whole task
    fold; quax_faust.core.dsp, quax_faust.core.accumulators and pyfftw stay unloaded."""
    script = """
import sys
import numpy as np, pyarrow as pa
import spark_batch.archive, spark_batch.cli, spark_batch.export, spark_batch.job, spark_batch.session
import spark_batch.verify, spark_batch.campaign_fold, quax_faust.client
from spark_batch import fold
from quax_faust.core import wire
x = np.ones((4, 8), np.complex64)
value = wire.encode_slice_batch(wire.SliceBatch("r", 0, 0, 4, 0, 1e3, 1.0, x))
batch = pa.RecordBatch.from_pydict({"key": pa.array([wire.file_key("r", 0)]), "value": pa.array([value]),
    "partition": pa.array([0], pa.int32()), "offset": pa.array([0], pa.int64())})
rows = [r for b in fold.fold_slices("r")([batch]) for r in b.to_pylist()]
assert rows[0]["n_slices"] == 4, rows
print(",".join(sorted(m for m in sys.modules if m.startswith(("quax_faust", "pyfftw")))))
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    loaded = set(out.stdout.strip().split(","))
    assert "quax_faust.core.wire" in loaded and not loaded & LIVE_NUMERICS, loaded


def test_a_cluster_gets_only_the_decoder_and_settings_of_the_live_package():
    from spark_batch.session import shipped_files

    live = sorted(p.relative_to(REPO / "quax_faust").as_posix() for p in shipped_files()
                  if p.is_relative_to(REPO / "quax_faust"))
    assert live == ["__init__.py", "core/__init__.py", "core/errors.py", "core/wire.py", "settings.py"]
    assert all(p.is_file() for p in shipped_files())
    assert REPO / "spark_batch" / "recompute.py" in shipped_files()


def test_a_bug_in_the_live_numerics_does_not_reach_the_recompute(monkeypatch):
    """Break the live chain's spectrum: the audit's result does not move (so verify would differ)."""
    from quax_faust.core import accumulators, dsp

    x = _noise(3, 12)
    before = _fold_one_file(x, [(0, 12)])
    monkeypatch.setattr(dsp, "psd_scale", lambda slice_len, rate: 2.0 / (rate * slice_len))
    monkeypatch.setattr(dsp, "mean_and_std", lambda *a: (np.zeros(L), np.zeros(L)))
    monkeypatch.setattr(accumulators.FileAccumulator, "new_slices", lambda self, batch: np.ones(batch.slice_count, bool))
    after = _fold_one_file(x, [(0, 12), (0, 12)])  # a repeat the broken bitmap would count twice
    np.testing.assert_array_equal(after["mean"], before["mean"])
    assert after["n_slices"] == 12 and after["duplicate_slices"] == 12


# ------------------------------------------------------------------------------------------------
# Equality with scipy's Welch, slice for slice

def _noise(seed: int, n_slices: int, tone_bin: int | None = None, tone_v: float = 0.0) -> np.ndarray:
    """(n_slices, L) complex64: unit complex noise, plus a tone centred on an FFT bin if asked."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n_slices, L)) + 1j * rng.standard_normal((n_slices, L))) / np.sqrt(2)
    if tone_bin is not None:
        t = np.arange(n_slices * L).reshape(n_slices, L)
        x = x + tone_v * np.exp(2j * np.pi * tone_bin * t / L)
    return x.astype(np.complex64)


def _with_tail(x: np.ndarray) -> np.ndarray:
    """The file as the DAQ wrote it: its whole slices and a TAIL-sample remainder Welch ignores."""
    return np.concatenate([x.ravel(), np.full(TAIL, 100.0, np.complex64)]).astype(np.complex128)


def _welch(samples: np.ndarray) -> np.ndarray:
    _, p = scipy.signal.welch(samples, fs=FS, window="boxcar", nperseg=L, noverlap=0, detrend=False,
                              return_onesided=False, scaling="density")
    return np.fft.fftshift(p)


def _per_slice(samples: np.ndarray) -> np.ndarray:
    """(n_slices, L) periodograms by scipy.signal.spectrogram, fftshifted."""
    _, _, sxx = scipy.signal.spectrogram(samples, fs=FS, window="boxcar", nperseg=L, noverlap=0,
                                         detrend=False, return_onesided=False, scaling="density", mode="psd")
    return np.fft.fftshift(sxx, axes=0).T


def _message(file_index: int, x: np.ndarray, first: int, stop: int, run: str = "r1") -> wire.SliceBatch:
    return wire.SliceBatch(run, file_index, first, x.shape[0], TAIL, FS, 1.0 + first, x[first:stop])


def _arrow(messages: list[wire.SliceBatch], partition: int = 0) -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict({
        "key": pa.array([wire.file_key(m.run, m.file_index) for m in messages], pa.binary()),
        "value": pa.array([wire.encode_slice_batch(m) for m in messages], pa.binary()),
        "partition": pa.array([partition] * len(messages), pa.int32()),
        "offset": pa.array(range(len(messages)), pa.int64())})


def _file_rows(messages: list[wire.SliceBatch], per_batch: int = 3) -> pa.Table:
    """The task fold then the per-file reduction, as the Spark job runs them: FILE_SCHEMA rows."""
    batches = [_arrow(messages[k:k + per_batch]) for k in range(0, len(messages), per_batch)]
    rows = [r for b in fold.fold_slices("r1")(batches) for r in b.to_pylist()]
    assert not [r for r in rows if r["kind"] != "file"], rows
    parts = pa.Table.from_pylist(rows, schema=fold.PART_SCHEMA).drop(["kind", "reason", "error"])
    files = [fold.merge_file_parts(parts.filter(pc.equal(parts["file_index"], i)))
             for i in sorted(set(parts["file_index"].to_pylist()))]
    return pa.concat_tables(files)


def _fold_one_file(x: np.ndarray, ranges: list[tuple[int, int]]) -> dict:
    return _file_rows([_message(0, x, a, b) for a, b in ranges]).to_pylist()[0]


def test_periodograms_are_scipys_and_a_tone_lands_in_its_bin_with_its_power():
    x = _noise(1, 10, tone_bin=5, tone_v=3.0)
    p = recompute.periodograms(x, FS)
    assert p.dtype == np.float64 and p.shape == (10, L)
    np.testing.assert_allclose(p, _per_slice(x.ravel().astype(np.complex128)), rtol=1e-12, atol=1e-15)
    f = recompute.frequency_axis_hz(L, FS, lo_frequency_hz=9.0e9)
    np.testing.assert_allclose(f - 9.0e9, np.fft.fftshift(scipy.signal.welch(
        x.ravel(), fs=FS, nperseg=L, return_onesided=False)[0]), atol=1e-6)
    line = int(np.argmax(p.mean(axis=0)))
    assert f[line] - 9.0e9 == pytest.approx(5 * FS / L)
    # A tone of amplitude A on a bin puts A**2 * L / FS (V**2/Hz) there, on top of the noise's 1/FS.
    assert p.mean(axis=0)[line] == pytest.approx(9.0 * L / FS + 1 / FS, rel=0.15)


@pytest.mark.parametrize("ranges, repeats", [
    ([(0, 24)], 0),
    ([(0, 8), (8, 16), (16, 24)], 0),
    ([(0, 8), (4, 12), (0, 8), (12, 24), (0, 24), (20, 24)], 4 + 8 + 24 + 4),  # overlaps, repeats
    ([(16, 24), (0, 10), (5, 20), (23, 24)], 5 + 4 + 1),                        # out of order
])
def test_a_file_is_welchs_average_of_its_slices_each_counted_once(ranges, repeats):
    x = _noise(7, 24, tone_bin=-11, tone_v=2.0)
    row = _fold_one_file(x, ranges)
    assert row["complete"] and row["n_slices"] == 24 and row["duplicate_slices"] == repeats
    assert row["n_messages"] == len(ranges)
    np.testing.assert_allclose(row["mean"], _welch(_with_tail(x)), rtol=1e-10)
    np.testing.assert_allclose(row["std"], _per_slice(_with_tail(x)).std(axis=0, ddof=1), rtol=1e-8)


def test_a_run_is_the_mean_over_every_whole_slice_of_its_complete_files():
    files = {0: _noise(10, 16, tone_bin=3, tone_v=1.5), 1: _noise(11, 9, tone_bin=3, tone_v=1.5),
             2: _noise(12, 30, tone_bin=3, tone_v=1.5), 3: _noise(13, 12)}
    messages = [_message(0, files[0], 0, 10), _message(1, files[1], 0, 9), _message(0, files[0], 6, 16),
                _message(2, files[2], 0, 20), _message(1, files[1], 3, 7), _message(2, files[2], 15, 30),
                _message(0, files[0], 0, 16), _message(3, files[3], 0, 7),   # file 3 never completes
                _message(2, files[2], 10, 25)]
    table = _file_rows(messages)
    by_file = {r["file_index"]: r for r in table.to_pylist()}
    assert [by_file[i]["complete"] for i in range(4)] == [True, True, True, False]
    assert by_file[3]["n_slices"] == 7 and by_file[3]["mean"] is not None
    complete = table.filter(table["complete"])
    parts = [r for b in fold.run_sums(complete.to_batches(max_chunksize=2)) for r in b.to_pylist()]
    assert len(parts) == 1 and parts[0]["n_files"] == 3 and parts[0]["tail_samples"] == 3 * TAIL
    n, power_sum, power_sumsq = fold.merge_run_parts(parts)
    mean, std, sem = recompute.run_statistics(n, power_sum, power_sumsq)

    all_slices = np.concatenate([files[i].ravel() for i in range(3)]).astype(np.complex128)
    assert n == 16 + 9 + 30
    np.testing.assert_allclose(mean, _welch(all_slices), rtol=1e-10)
    oracle_std = _per_slice(all_slices).std(axis=0, ddof=1)
    np.testing.assert_allclose(std, oracle_std, rtol=1e-8)
    np.testing.assert_allclose(sem, oracle_std / np.sqrt(n), rtol=1e-8)
    for i in range(3):
        np.testing.assert_allclose(by_file[i]["mean"], _welch(_with_tail(files[i])), rtol=1e-10)


def test_the_run_sums_split_over_tasks_add_up_to_the_same_run():
    rows = [{"n_slices": n, "tail_samples": TAIL, "mean": np.full(L, m), "std": np.full(L, s)}
            for n, m, s in ((10, 1.0, 0.9), (4, 2.0, 1.5), (1, 3.0, 0.0), (7, 0.5, 0.4))]
    schema = pa.schema([("n_slices", pa.int64()), ("tail_samples", pa.int64()),
                        ("mean", fold.SPECTRUM), ("std", fold.SPECTRUM)])
    batch = lambda rs: pa.RecordBatch.from_pylist(rs, schema=schema)
    one = fold.merge_run_parts([r for b in fold.run_sums([batch(rows)]) for r in b.to_pylist()])
    split = fold.merge_run_parts([r for k in (0, 2) for b in fold.run_sums([batch(rows[k:k + 2])])
                                  for r in b.to_pylist()])
    assert one[0] == split[0] == 22
    np.testing.assert_allclose(split[1], one[1], rtol=1e-14)
    np.testing.assert_allclose(split[2], one[2], rtol=1e-14)
    # The pooled variance: within-file spread plus the spread of the file means.
    mean, std, _ = recompute.run_statistics(*one)
    n = np.array([10, 4, 1, 7])
    m, s = np.array([1.0, 2.0, 3.0, 0.5]), np.array([0.9, 1.5, 0.0, 0.4])
    grand = (n * m).sum() / n.sum()
    np.testing.assert_allclose(mean, grand)
    np.testing.assert_allclose(std, np.sqrt((((n - 1) * s**2).sum() + (n * (m - grand) ** 2).sum()) / 21))


def test_edge_counts_follow_the_live_tables_definitions():
    one = np.full(L, 2.0)
    mean, std = recompute.mean_and_std(1, one, one * one)
    np.testing.assert_array_equal(mean, 2.0)
    np.testing.assert_array_equal(std, 0.0)  # a one-slice file has std 0, as in the spectra topic
    mean, std, sem = recompute.run_statistics(1, one, one * one)
    assert np.isnan(std).all() and np.isnan(sem).all()  # a one-slice run: undefined, as quax export
    constant = recompute.mean_and_std(3, 3 * one * 0.1, 3 * (one * 0.1) ** 2)[1]
    assert (constant >= 0).all() and constant.max() < 1e-8
    with pytest.raises(ValueError):
        recompute.mean_and_std(0, one, one)


def test_messages_that_do_not_fit_their_file_are_refused_and_change_nothing():
    x = _noise(5, 8)
    sums = FileSums.for_message(0, _message(0, x, 0, 4))
    assert sums.add(_message(0, x, 0, 4)) == 4
    before = (sums.power_sum.copy(), sums.counted.copy(), sums.n_slices, sums.duplicate_slices)
    bad_rate = wire.SliceBatch("r1", 0, 4, 8, TAIL, 2 * FS, 1.0, x[4:8])
    bad_len = wire.SliceBatch("r1", 0, 4, 8, TAIL, FS, 1.0, np.ones((4, 32), np.complex64))
    nan = x.copy()
    nan[5, 3] = np.nan
    for message, reason in ((bad_rate, "inconsistent_file"), (bad_len, "inconsistent_file"),
                            (_message(0, nan, 4, 8), "non_finite_samples")):
        with pytest.raises(RecordError) as info:
            sums.add(message)
        assert info.value.reason == reason
    np.testing.assert_array_equal(sums.power_sum, before[0])
    np.testing.assert_array_equal(sums.counted, before[1])
    assert (sums.n_slices, sums.duplicate_slices) == before[2:]
    # NaN only in slices already counted: those are repeats, not looked at again.
    assert sums.add(_message(0, nan, 0, 4)) == 0 and sums.duplicate_slices == 4
    assert sums.add(_message(0, x, 2, 8)) == 4 and sums.complete
    sums.release()
    assert sums.add(_message(0, x, 0, 8)) == 0 and sums.duplicate_slices == 4 + 2 + 8


def test_the_spectra_topic_round_trip_keeps_a_files_mean_and_std():
    x = _noise(9, 17, tone_bin=20, tone_v=4.0)
    per_slice = _per_slice(x.ravel().astype(np.complex128))
    mean, std = per_slice.mean(axis=0), per_slice.std(axis=0, ddof=1)
    s1, s2 = recompute.sums_from_mean_and_std(17, mean, std)
    back_mean, back_std = recompute.mean_and_std(17, s1, s2)
    np.testing.assert_allclose(back_mean, mean, rtol=1e-14)
    np.testing.assert_allclose(back_std, std, rtol=1e-10)


# ------------------------------------------------------------------------------------------------
# A file's acquisition time: the rule of the live file table, so `quax verify` can compare it

def _acquired(file_index: int, x: np.ndarray, first: int, stop: int, at: float) -> wire.SliceBatch:
    return dataclasses.replace(_message(file_index, x, first, stop), acquired_at_s=at)


def test_a_files_acquisition_time_is_the_earliest_known_of_its_counted_messages_as_live():
    from quax_faust.core.accumulators import FileAccumulator  # the live rule, in the test only

    x = _noise(3, 12)
    messages = [_acquired(0, x, 0, 4, np.nan),            # a version-1 producer: unknown
                _acquired(0, x, 4, 8, 1.7e9 + 60),
                _acquired(0, x, 0, 8, 1.0),               # nothing new in it: not counted, time ignored
                _acquired(0, x, 6, 12, 1.7e9 + 30)]       # re-sent after the file's time changed
    row = _file_rows(messages).to_pylist()[0]
    assert row["complete"] and row["acquired_at_s"] == 1.7e9 + 30
    live = FileAccumulator.for_batch(messages[0])
    for m in messages:
        live.fold(m, block_rows=4, threads=1)
    assert live.acquired_at_s == row["acquired_at_s"]
    # Parts of one file from two tasks (disjoint slices): the earliest known of both; none known: NaN.
    key = wire.file_key("r1", 0)
    parts = [b for m, p in ((_acquired(0, x, 0, 6, 1.7e9 + 9), 0), (_acquired(0, x, 6, 12, np.nan), 1))
             for b in fold.fold_slices("r1")([_records_of([m], key, p)])]
    merged = fold.merge_file_parts(pa.Table.from_batches(parts).drop(["kind", "reason", "error"])).to_pylist()[0]
    assert merged["complete"] and merged["acquired_at_s"] == 1.7e9 + 9
    unknown = _file_rows([_message(0, x, 0, 12)]).to_pylist()[0]
    assert np.isnan(unknown["acquired_at_s"])


def _records_of(messages: list[wire.SliceBatch], key: bytes, partition: int) -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict({
        "key": pa.array([key] * len(messages), pa.binary()),
        "value": pa.array([wire.encode_slice_batch(m) for m in messages], pa.binary()),
        "partition": pa.array([partition] * len(messages), pa.int32()),
        "offset": pa.array(range(len(messages)), pa.int64())})


def test_the_spectra_fold_carries_each_files_acquisition_time_version_1_as_unknown():
    mean = np.full(L, 2.0)
    v2 = wire.encode_file_spectrum(wire.FileSpectrum("r1", 0, 4, TAIL, FS, 1.0, 2.0, 3.0, mean, mean, 1.7e9))
    head = struct.pack("<4sHHHHIIIIdddd", b"QXSP", 1, 62, 2, 0, 1, 4, L, TAIL, FS, 1.0, 2.0, 3.0)
    v1 = head + b"r1" + mean.tobytes() + mean.tobytes()  # as a worker wrote it before acquisition times
    batch = pa.RecordBatch.from_pydict({"key": pa.array([b"r1", b"r1"], pa.binary()),
                                        "value": pa.array([v2, v1], pa.binary()),
                                        "partition": pa.array([0, 0], pa.int32()),
                                        "offset": pa.array([0, 1], pa.int64())})
    rows = {r["file_index"]: r for b in fold.fold_spectra("r1")([batch]) for r in b.to_pylist()}
    assert rows[0]["acquired_at_s"] == 1.7e9 and np.isnan(rows[1]["acquired_at_s"])


def test_the_export_layout_has_each_files_acquisition_time(tmp_path):
    from spark_batch import export

    x = _noise(4, 6)
    rows = _file_rows([_acquired(2, x, 0, 6, 1.7e9 + 2), _acquired(1, x, 0, 6, np.nan)])
    pq_path = tmp_path / "files.parquet"
    pq_path.mkdir()
    pa.parquet.write_table(rows, pq_path / "part-0.parquet")
    small = export.read_file_table(pq_path)
    data = export.arrays(pq_path, small, tmp_path / "scratch", run="r1", n_slices=12, run_mean=np.ones(L),
                         run_std=np.ones(L), run_sem=np.ones(L), lo_frequency_hz=0.0)
    assert list(data["file_index"]) == [1, 2] and data["file_acquired_at_s"].dtype == np.float64
    assert np.isnan(data["file_acquired_at_s"][0]) and data["file_acquired_at_s"][1] == 1.7e9 + 2


def test_verify_compares_acquisition_times_when_both_sides_carry_them():
    from spark_batch.verify import compare

    def run(times=None):
        data = {"run": np.array("r1"), "run_mean": np.ones(L), "n_slices_total": np.int64(8),
                "file_index": np.array([0, 1]), "file_n_slices": np.array([4, 4]), "file_mean": np.ones((2, L))}
        if times is not None:
            data["file_acquired_at_s"] = np.array(times, dtype=np.float64)
        return data

    assert compare(run([np.nan, 1.7e9]), run([np.nan, 1.7e9]), 1e-6).equal  # unknown = unknown
    assert compare(run(), run([np.nan, 1.7e9]), 1e-6).equal  # a live export without them: not compared
    verdict = compare(run([1.7e9, 1.7e9 + 4]), run([np.nan, 1.7e9 + 4]), 1e-6)
    assert not verdict.equal and verdict.differing_files == [0]
    assert "file 0: acquired at 1700000000.0 s live, nan s recomputed" in "\n".join(verdict.lines())
