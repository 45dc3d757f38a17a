"""``quax reprocess-campaign``: a campaign's runs recomputed by Spark from the archive in one pass,
equal to ``quax campaign`` on the live tables.

First the tasks' grouping fold on its own (Arrow batches in, rows out; no Spark, no broker): many
runs folded at once give each run exactly what the one-run fold gives it. Then the real chain:
three runs produced with their metadata (two with their cavity, LOs a whole number of bins apart;
one without its cavity), analysed from the live tables and from the archived slices topic by real
local Spark: the same runs used and left out, the same slices, the same grand spectrum.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from quax_faust.core import wire
from quax_faust.exports.campaign import read_campaign
from quax_faust.settings import Settings
from quax_faust.tools import cli
from spark_batch import campaign_fold, fold
from tests.conftest import campaign_records, produce_runs, write_synthetic_run

N_FILES, SLICES_PER_FILE = 2, 16
G2_TOLERANCE_SIGMA = 1e-5
"""Largest |g2 difference| between the Spark and the live campaign, in units of the bin's sigma
(and largest significance difference, in sigma). The live averages are float32 sums, the Spark ones
float64 from complex128 FFTs: they agree to ~1e-7 of the level (verify_tolerance 1e-6), which moves
g2 by ~1e-7/(1/sqrt(N)) of sigma; measured max 1.05e-6..1.24e-6 sigma from slices, 1.7e-15 from
spectra (docs/spark.md, "Campaigns")."""


# ------------------------------------------------------------------------------------------------
# The grouping fold on its own

def _batch(records: list[tuple[bytes | None, bytes | None]], partition: int = 0, first: int = 0) -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict({
        "key": pa.array([k for k, _ in records], pa.binary()), "value": pa.array([v for _, v in records], pa.binary()),
        "partition": pa.array([partition] * len(records), pa.int32()),
        "offset": pa.array(range(first, first + len(records)), pa.int64())})


def _slice_messages(run: str, file_index: int, n_slices: int, per_message: int) -> list[tuple[bytes, bytes]]:
    rng = np.random.default_rng(hash((run, file_index)) % 2**32)
    x = rng.standard_normal((n_slices, 32, 2)).astype(np.float32).view(np.complex64)[..., 0]
    return [(wire.file_key(run, file_index), wire.encode_slice_batch(wire.SliceBatch(
        run, file_index, k, n_slices, 3, 1e3, 1.0, x[k:k + per_message]))) for k in range(0, n_slices, per_message)]


def _files(rows: list[dict]) -> dict[tuple[str, int], dict]:
    parts = pa.Table.from_pylist([r for r in rows if r["kind"] == "file"], schema=campaign_fold.RUN_PARTS_SCHEMA)
    parts = parts.drop_columns(["kind", "reason", "error"])
    merged = {}
    for run, index in sorted({(r["run"], r["file_index"]) for r in rows if r["kind"] == "file"}):
        mask = pc.and_(pc.equal(parts["run"], run), pc.equal(parts["file_index"], index))
        merged[run, index] = campaign_fold.merge_run_file_parts(parts.filter(mask)).to_pylist()[0]
    return merged


def test_one_pass_over_many_runs_gives_each_run_what_its_own_fold_gives():
    a = _slice_messages("a", 0, 12, 4) + _slice_messages("a", 1, 8, 8)
    b = _slice_messages("b", 0, 12, 4)
    other = _slice_messages("c", 0, 4, 4)
    records = [a[0], b[0], other[0], a[1], a[0], b[1], a[2], (b"no-run-here", b"x"), b[2], a[3],
               (wire.file_key("a", 5), b"JUNK" * 20), (wire.file_key("b", 1), None)]
    rows = [r for batch in campaign_fold.fold_runs("slices", ["a", "b"])([_batch(records[:6]), _batch(records[6:], first=6)])
            for r in batch.to_pylist()]
    held = {r["run"]: r["n_messages"] for r in rows if r["kind"] == "held"}
    assert held == {"a": 6, "b": 4, "c": 1}  # run c is counted, not folded: the driver names what the archive holds
    bad = sorted((r["run"] or "", r["reason"]) for r in rows if r["kind"] == "malformed")
    assert bad == [("", "bad_key"), ("a", "bad_magic"), ("b", "null_value")]  # "": the key names no run
    files = _files(rows)
    assert sorted(files) == [("a", 0), ("a", 1), ("b", 0)]
    for run, messages in (("a", a), ("b", b)):
        alone = [r for batch in fold.fold_slices(run)([_batch(messages)]) for r in batch.to_pylist()]
        for (r, index), row in files.items():
            if r == run:
                single = fold.merge_file_parts(pa.Table.from_pylist(
                    [x for x in alone if x["file_index"] == index], schema=fold.PART_SCHEMA)
                    .drop_columns(["kind", "reason", "error"])).to_pylist()[0]
                assert row["complete"] and row["n_slices"] == single["n_slices"]
                np.testing.assert_array_equal(row["mean"], single["mean"])
    assert files["a", 0]["duplicate_slices"] == 4  # a[0] read twice: counted once

    # Per run: task sums (each file in a task of its own), then one row per run.
    complete = pa.Table.from_pylist(list(files.values()), schema=campaign_fold.RUN_FILE_SCHEMA)
    task_rows = [r for k in range(3) for batch in campaign_fold.runs_sums(complete.slice(k, 1).to_batches())
                 for r in batch.to_pylist()]
    per_run = {}
    for run in ("a", "b"):
        rows_of_run = pa.Table.from_pylist([r for r in task_rows if r["run"] == run], schema=campaign_fold.RUN_SUMS_SCHEMA)
        per_run[run] = campaign_fold.merge_runs_sums(rows_of_run).to_pylist()[0]
    assert (per_run["a"]["n_files"], per_run["a"]["n_slices"]) == (2, 20)
    assert (per_run["b"]["n_files"], per_run["b"]["n_slices"]) == (1, 12)
    a_files = [files["a", 0], files["a", 1]]
    expected = sum(f["n_slices"] * np.asarray(f["mean"]) for f in a_files)
    np.testing.assert_allclose(per_run["a"]["power_sum"], expected, rtol=1e-12)


def test_a_record_names_its_run_by_its_key():
    assert campaign_fold.run_of_key(wire.file_key("step-1.a", 7), "slices") == "step-1.a"
    assert campaign_fold.run_of_key(b"step1", "spectra") == "step1"
    assert campaign_fold.run_of_key(b"step1", "slices") is None  # a slice key is run/file_index
    assert campaign_fold.run_of_key(b"../x/0001", "slices") is None  # not a run id
    assert campaign_fold.run_of_key(None, "spectra") is None


def test_spectra_of_many_runs_keep_each_files_first_copy():
    def spectrum(run: str, index: int, level: float) -> tuple[bytes, bytes]:
        mean = np.full(8, level)
        return run.encode(), wire.encode_file_spectrum(wire.FileSpectrum(run, index, 10, 0, 1e3, 1.0, 2.0, 3.0, mean, mean / 2))

    records = [spectrum("a", 0, 1.0), spectrum("b", 0, 5.0), spectrum("a", 0, 9.0), spectrum("b", 1, 7.0)]
    rows = [r for batch in campaign_fold.fold_runs("spectra", None)([_batch(records)]) for r in batch.to_pylist()]
    files = _files(rows)
    np.testing.assert_allclose(files["a", 0]["mean"], 1.0)  # the first copy, not the later 9.0
    assert files["a", 0]["duplicate_slices"] == 10
    np.testing.assert_allclose(files["b", 1]["mean"], 7.0)


# ------------------------------------------------------------------------------------------------
# Real Spark on the real chain

@pytest.fixture(scope="module")
def spark():
    from spark_batch.session import get_session

    session = get_session(Settings(), {"spark.ui.enabled": "false"})
    yield session
    session.stop()


def _quax(args: list[str], settings: Settings) -> int:
    """The `quax` command in this process (it reuses the module's SparkSession)."""
    flags = [f"--set={name}={getattr(settings, name)}" for name in (
        "broker", "slices_topic", "spectra_topic", "metadata_topic", "web_port_base", "workers")]
    saved = dict(os.environ)
    try:
        return cli.main(args + flags)
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.mark.broker
@pytest.mark.slow  # real local Spark
def test_spark_campaign_equals_the_live_campaign(spark, make_stack, tmp_path, caplog, capsys):
    settings, _workers = make_stack(workers=2)
    daq_dir = write_synthetic_run(tmp_path / "daq", N_FILES, SLICES_PER_FILE * settings.slice_len, seed=5)
    records = campaign_records(settings)
    produce_runs(settings, daq_dir, records, N_FILES)

    live_path, spark_path = tmp_path / "live.h5", tmp_path / "spark.npz"
    assert _quax(["campaign", "--all", "--out", str(live_path)], settings) == 0
    assert _quax(["reprocess-campaign", "--all", "--from", "slices", "--out", str(spark_path)], settings) == 0
    out = capsys.readouterr().out
    assert "3 runs from topic" in out and "step0: 2 complete files, 32 slices" in out
    live, batch = read_campaign(live_path), read_campaign(spark_path)
    lt, st = live.tables, batch.tables
    assert st["runs_used"]["run"].tolist() == lt["runs_used"]["run"].tolist() == ["step0", "step1"]
    assert st["runs_used"]["n_slices"].tolist() == lt["runs_used"]["n_slices"].tolist() == [N_FILES * SLICES_PER_FILE] * 2
    np.testing.assert_array_equal(st["runs_used"]["lo_frequency_hz"], lt["runs_used"]["lo_frequency_hz"])
    assert st["runs_left_out"]["run"].tolist() == lt["runs_left_out"]["run"].tolist() == ["nocavity"]
    assert st["runs_left_out"]["reason"].tolist() == lt["runs_left_out"]["reason"].tolist()
    assert set(st["runs_used"]["source"]) == {f"spark: topic {settings.slices_topic}"}
    inputs = batch.metadata["inputs"]
    assert inputs["spark"]["topic"] == settings.slices_topic and inputs["spark"]["offsets"]
    assert {run: c["n_slices"] for run, c in inputs["archive"].items()} == {run: 32 for run in records}

    grand_l, grand_s = lt["grand"], st["grand"]
    np.testing.assert_array_equal(grand_s["frequency_hz"], grand_l["frequency_hz"])
    np.testing.assert_array_equal(grand_s["n_runs"], grand_l["n_runs"])
    finite = np.isfinite(grand_l["g2"])
    assert finite.sum() > 1000 and np.array_equal(finite, np.isfinite(grand_s["g2"]))
    g2_off = np.abs(grand_s["g2"] - grand_l["g2"])[finite] / grand_l["sigma"][finite]
    sig_off = np.abs(grand_s["significance"] - grand_l["significance"])[finite]
    rel = np.abs(grand_s["g2"] - grand_l["g2"])[finite] / np.abs(grand_l["g2"][finite])
    print(f"spark vs live: max |dg2|/sigma {g2_off.max():.2e}, max |dsignificance| {sig_off.max():.2e} sigma, "
          f"max |dg2/g2| {rel.max():.2e}, median {np.median(rel):.2e}")
    assert g2_off.max() <= G2_TOLERANCE_SIGMA and sig_off.max() <= G2_TOLERANCE_SIGMA
    np.testing.assert_allclose(st["exclusion"]["g_limit_gev"], lt["exclusion"]["g_limit_gev"], rtol=1e-6)
    assert len(st["candidates"]["frequency_hz"]) == len(lt["candidates"]["frequency_hz"])

    # From the per-file spectra, runs named in another order: the same campaign.
    from_spectra = tmp_path / "spectra.h5"
    assert _quax(["reprocess-campaign", "--runs", "step1", "nocavity", "step0", "--from", "spectra",
                  "--out", str(from_spectra)], settings) == 0
    ft = read_campaign(from_spectra).tables
    assert sorted(ft["runs_used"]["run"]) == ["step0", "step1"] and ft["runs_left_out"]["run"].tolist() == ["nocavity"]
    assert sorted(ft["runs_used"]["n_slices"]) == [N_FILES * SLICES_PER_FILE] * 2
    spectra_off = np.abs(ft["grand"]["g2"] - grand_l["g2"])[finite] / grand_l["sigma"][finite]
    print(f"spark --from spectra vs live: max |dg2|/sigma {spectra_off.max():.2e}")
    assert spectra_off.max() <= G2_TOLERANCE_SIGMA

    # A run the archive does not hold: named, with those it holds (here from the spectra topic).
    with caplog.at_level(logging.ERROR, logger="quax"):
        assert _quax(["reprocess-campaign", "--runs", "step0", "step9", "--from", "spectra",
                      "--out", str(tmp_path / "x.h5")], settings) == 3
    assert (f"the archive (topic {settings.spectra_topic}) holds no run 'step9' "
            "(it holds 3: nocavity, step0, step1)") in caplog.text
    assert not (tmp_path / "x.h5").exists()
