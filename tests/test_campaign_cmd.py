"""``quax campaign`` (quax_faust/tools/campaign_cmd.py) on a synthetic campaign, no broker.

12 one-hour runs of search/synthetic_campaign.py (3072 bins of 651 Hz, LO stepped by 50 kHz), one
axion injected at about 8 sigma of the grand spectrum, run003 recorded without loaded_q and t_sys_k.
The runs are written as `quax export` writes them (exports.write.write_run with layout.describe:
.h5, .npz and .csv), read back by the command through cli.main, and the campaign file checked
against the pure analysis of the same runs. The live path (--runs/--all) reads a stand-in for the
workers' run views over HTTP. A few seconds.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

import numpy as np
import pytest

from quax_faust.client import RunAverage
from quax_faust.core.dsp import frequency_axis_hz
from quax_faust.exports import layout, write
from quax_faust.exports.campaign import read_campaign
from quax_faust.search import axion
from quax_faust.search.grand import grand_spectrum
from quax_faust.search.synthetic_campaign import Axion, CampaignPlan, synthetic_campaign
from quax_faust.settings import Settings
from quax_faust.tools import cli
from quax_faust.tools.campaign_cmd import read_live

PLAN = CampaignPlan()
SUFFIX = {**{k: ".h5" for k in range(4)}, **{k: ".npz" for k in range(4, 8)}, **{k: ".csv" for k in range(8, 12)}}
LACKING = "run003"


def average_of(run) -> RunAverage:
    """A run as the workers' run view serves it (client.RunAverage): LO added to the axis."""
    n = run.mean.size
    return RunAverage(run=run.run, frequency_hz=frequency_axis_hz(n, run.sample_rate_hz, run.metadata["lo_frequency_hz"]),
                      mean=run.mean, std=run.mean, sem=run.mean / np.sqrt(run.n_slices), n_slices=run.n_slices,
                      file_indices=np.zeros(0, np.int64), sample_rate_hz=run.sample_rate_hz, tail_samples_dropped=0,
                      metadata=dict(run.metadata))


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    """(runs as the analysis takes them, export paths, the injected axion)."""
    reference = grand_spectrum(synthetic_campaign(PLAN, seed=0))
    k = int(np.argmin(np.abs(reference.frequency_hz - 10.4005e9)))
    injected = Axion(float(reference.frequency_hz[k]) + 100.0, 8.0 * float(reference.sigma[k]))
    runs = synthetic_campaign(PLAN, [injected], seed=1)
    lacking = {name: value for name, value in runs[3].metadata.items() if name not in ("loaded_q", "t_sys_k")}
    runs[3] = replace(runs[3], metadata=lacking)
    directory = tmp_path_factory.mktemp("exports")
    paths = []
    for index, run in enumerate(runs):
        average = average_of(run)
        path = directory / f"{run.run}{SUFFIX[index]}"
        write.write_run(path, average, [], layout.describe(average, average.metadata))  # as `quax export`
        paths.append(path)
    return runs, paths, injected


def quax_campaign(*args) -> int:
    return cli.main(["campaign", *map(str, args)])


def test_campaign_from_exports_lists_the_axion_the_left_out_run_and_the_limit(campaign, tmp_path, capsys):
    runs, paths, injected = campaign
    out = tmp_path / "campaign.h5"
    assert quax_campaign("--exports", *paths, "--out", out) == 0
    result = read_campaign(out)
    t = result.tables

    # The runs: all but run003, which is listed with its reason and file.
    expected = grand_spectrum(runs)
    assert t["runs_left_out"]["run"].tolist() == [LACKING]
    assert "its metadata lacks loaded_q, t_sys_k" in t["runs_left_out"]["reason"][0]
    assert t["runs_left_out"]["source"][0] == str(paths[3])
    used = [r.run for r in runs if r.run != LACKING]
    assert t["runs_used"]["run"].tolist() == used
    assert t["runs_used"]["lo_frequency_hz"] == pytest.approx(np.delete(PLAN.lo_frequencies_hz(), 3), abs=1e-6)
    assert t["runs_used"]["n_slices"].tolist() == [PLAN.n_slices] * len(used)
    assert t["runs_used"]["t_sys_k"].tolist() == [PLAN.cavity.t_sys_k] * len(used)
    assert t["runs_used"]["noise_ratio"] == pytest.approx(1.0, abs=0.05)  # the exported N is the true N
    lo = PLAN.lo_frequencies_hz()[0]
    assert t["runs_used"]["used_low_hz"][0] == pytest.approx(lo - 0.7e6, abs=PLAN.bin_width_hz)
    assert t["runs_used"]["used_high_hz"][0] == pytest.approx(lo + 0.7e6, abs=PLAN.bin_width_hz)

    # The grand spectrum is the pure analysis of the same runs, bin for bin: nothing lost in the exports.
    for name in ("frequency_hz", "g2", "sigma", "significance", "n_runs", "combined_g2"):
        np.testing.assert_array_equal(t["grand"][name], getattr(expected, name), err_msg=name)
    assert result.units["grand"]["frequency_hz"] == "Hz" and result.units["grand"]["g2"] == "(g/g_KSVZ)**2"

    # The injected axion heads the rescan list at its frequency, about as strong as injected.
    candidates = t["candidates"]
    assert abs(candidates["frequency_hz"][0] - injected.frequency_hz) <= PLAN.bin_width_hz
    assert 5.0 < candidates["significance"][0] < 11.0
    assert candidates["g2"][0] == pytest.approx(injected.g2, abs=3 * candidates["sigma"][0])
    assert np.all(candidates["significance"] > 3.355)
    first = t["candidate_runs"]["candidate"] == 0
    covering = set(t["candidate_runs"]["run"][first])
    assert {"run005", "run006", "run007"} <= covering and LACKING not in covering
    assert t["candidate_runs"]["weight"][first].sum() == pytest.approx(1.0, abs=0.05)
    assert abs(candidates["rescan_cavity_frequency_hz"][0] - injected.frequency_hz) < 10e3

    # The exclusion curve in GeV**-1, beside KSVZ and DFSZ; the injected coupling is not excluded.
    curve = t["exclusion"]
    np.testing.assert_array_equal(curve["frequency_hz"], expected.frequency_hz)
    assert curve["ksvz_gev"] == pytest.approx(axion.ksvz_coupling_gev(curve["frequency_hz"]), rel=1e-12)
    assert curve["dfsz_gev"] / curve["ksvz_gev"] == pytest.approx(0.371, rel=1e-3)
    covered = np.isfinite(t["grand"]["significance"])
    assert np.isfinite(curve["g_limit_gev"][covered]).all() and np.isnan(curve["g_limit_gev"][~covered]).all()
    assert np.all(curve["g_limit_gev"][covered] >= curve["g_sensitivity_gev"][covered] * (1 - 1e-12))
    k = int(np.argmin(np.abs(curve["frequency_hz"] - injected.frequency_hz)))
    assert curve["g_limit_gev"][k] > np.sqrt(injected.g2) * curve["ksvz_gev"][k]
    assert 2.0 < np.nanmin(curve["limit_over_ksvz"]) < 6.0  # haloscope.md: one hour per step, ~3.5 x KSVZ

    # What was done, with which knobs.
    meta = result.metadata
    assert meta["format"] == "quax-campaign/1" and meta["threshold_sigma"] == pytest.approx(3.355, abs=1e-3)
    assert meta["config"]["line_bins"] == 16 and meta["confidence"] == 0.9
    assert meta["inputs"]["exports"] == [str(p) for p in paths]
    assert meta["n_runs_used"] == 11 and meta["n_runs_left_out"] == 1
    assert meta["band"]["covered_hz"] == pytest.approx(np.count_nonzero(covered) * PLAN.bin_width_hz)
    assert meta["best_limit"]["limit_over_ksvz"] == pytest.approx(np.nanmin(curve["limit_over_ksvz"]))

    printed = capsys.readouterr().out
    assert "campaign of 12 runs: 11 used, 1 left out\n  used: run000, run001, run002, run004, " in printed
    assert f"left out: {LACKING} ({paths[3]}): its metadata lacks loaded_q, t_sys_k" in printed
    assert f"band: {meta['band']['covered_low_hz']:.1f} .. {meta['band']['covered_high_hz']:.1f} Hz" in printed
    assert "threshold 3.355 sigma (an axion expected at 5 sigma passes it 95 % of the time)" in printed
    assert f"{candidates['frequency_hz'][0]:16.1f} {candidates['significance'][0]:6.2f}" in printed
    assert f"= {meta['best_limit']['limit_over_ksvz']:.2f} x KSVZ at" in printed
    assert f"wrote {out}" in printed


def test_npz_output_and_knobs(campaign, tmp_path):
    """The .npz holds the same tables; --config and --threshold reach the analysis and the file."""
    runs, paths, _ = campaign
    out = tmp_path / "campaign.npz"
    assert quax_campaign("--exports", *paths[4:10], "--out", out, "--threshold", "4",
                         "--config", "baseline_window_bins=201", "--confidence", "0.95") == 0
    result = read_campaign(out)
    assert result.metadata["config"]["baseline_window_bins"] == 201
    assert result.metadata["threshold_sigma"] == 4.0 and result.metadata["confidence"] == 0.95
    assert "target_significance" not in result.metadata
    assert np.all(result.tables["candidates"]["significance"] > 4.0)
    config = replace(grand_spectrum(runs[:1]).config, baseline_window_bins=201)
    np.testing.assert_array_equal(result.tables["grand"]["significance"], grand_spectrum(runs[4:10], config).significance)
    assert result.tables["runs_left_out"]["run"].size == 0
    assert result.tables["runs_used"]["run"].tolist() == [r.run for r in runs[4:10]]


def test_a_campaign_covering_no_whole_line_says_so(campaign, tmp_path, capsys):
    """Runs used, but no candidate frequency with its whole line in their used bins: an empty
    result, said as such, not an error."""
    _, paths, _ = campaign
    out = tmp_path / "none.h5"
    assert quax_campaign("--exports", *paths[:2], "--out", out, "--config", "band_fraction=0.004") == 0
    printed = capsys.readouterr().out
    assert "band: none: no candidate frequency has its whole line (16 bins)" in printed
    assert "no candidates above the threshold" in printed and "best limit" not in printed
    result = read_campaign(out)
    assert result.metadata["band"]["covered_hz"] == 0 and result.metadata["best_limit"] == {}
    assert np.isnan(result.tables["exclusion"]["g_limit_gev"]).all() and result.tables["candidates"]["g2"].size == 0


def test_bad_input_is_explained(campaign, tmp_path, caplog):
    _, paths, _ = campaign
    out = tmp_path / "c.h5"

    def fails(code: int, *args) -> str:
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="quax"):
            assert quax_campaign(*args) == code
        assert not out.exists()
        return caplog.text

    missing = tmp_path / "run999.h5"
    assert f"no such export: {missing}" in fails(3, "--exports", paths[0], missing, "--out", out)
    assert f"run run000 twice: in {paths[0]} and {paths[0]}" in fails(2, "--exports", paths[0], paths[0], "--out", out)
    text = fails(3, "--exports", paths[3], "--out", out)
    assert "no usable run: every run was left out" in text and "run run003: left out" in text
    assert "lacks loaded_q, t_sys_k" in text
    (tmp_path / "notes.txt").write_text("not an export")
    assert "an export is .h5, .npz or .csv" in fails(2, "--exports", tmp_path / "notes.txt", "--out", out)
    (tmp_path / "broken.h5").write_text("not HDF5")
    assert f"{tmp_path / 'broken.h5'}: not a readable quax export: OSError" in fails(
        3, "--exports", paths[0], tmp_path / "broken.h5", "--out", out)
    assert "a campaign file is .h5 or .npz, not .csv" in fails(2, "--exports", paths[0], "--out", tmp_path / "c.csv")
    assert "--config 'line_width=3'" in fails(2, "--exports", paths[0], "--out", out, "--config", "line_width=3")
    assert "--confidence 90.0: a probability" in fails(2, "--exports", paths[0], "--out", out, "--confidence", "90")
    out.write_bytes(b"")
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="quax"):
        assert quax_campaign("--exports", paths[0], "--out", out) == 2
    assert "exists: give --force" in caplog.text and out.read_bytes() == b""
    out.unlink()
    with pytest.raises(SystemExit) as exited:  # argparse: one source of runs is required
        quax_campaign("--out", out)
    assert exited.value.code == 2


class RunViews(BaseHTTPRequestHandler):
    """A stand-in for the workers' /quax/runs/ and /quax/runs/<run>/ views (stream/views.py keys)."""

    runs: dict[str, RunAverage] = {}

    def do_GET(self):
        parts = [unquote(p) for p in self.path.split("?")[0].strip("/").split("/")]
        if parts == ["quax", "runs"]:
            status, doc = 200, {"runs": [{"run": run, "n_slices": a.n_slices} for run, a in sorted(self.runs.items())]}
        elif len(parts) == 3 and parts[:2] == ["quax", "runs"] and parts[2] in self.runs:
            a = self.runs[parts[2]]
            status, doc = 200, {"run": a.run, "n_files": 1, "n_slices": a.n_slices, "slice_len": a.slice_len,
                                "sample_rate_hz": a.sample_rate_hz, "tail_samples_dropped": 0, "file_indices": [0],
                                "frequency_hz": a.frequency_hz.tolist(), "mean": a.mean.tolist(),
                                "std": a.std.tolist(), "sem": a.sem.tolist(), "metadata": a.metadata}
        else:
            status, doc = 404, {"error": f"no run {parts[-1]!r}"}
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def workers(campaign):
    runs = campaign[0][4:9]
    RunViews.runs = {run.run: average_of(run) for run in runs}
    server = ThreadingHTTPServer(("127.0.0.1", 0), RunViews)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield runs, ["--web-port-base", str(server.server_address[1]), "--workers", "1", "--http-timeout-s", "5"]
    server.shutdown()
    server.server_close()


def test_live_runs_from_the_workers_views(workers, tmp_path, caplog):
    runs, flags = workers
    out = tmp_path / "live.h5"
    assert quax_campaign("--all", "--out", out, *flags) == 0
    result = read_campaign(out)
    assert result.tables["runs_used"]["run"].tolist() == [r.run for r in runs]
    assert set(result.tables["runs_used"]["source"]) == {"live tables"}
    assert result.metadata["inputs"]["runs"] == [r.run for r in runs]
    np.testing.assert_array_equal(result.tables["grand"]["g2"], grand_spectrum(runs).g2)

    assert quax_campaign("--runs", "run006", "run005", "--out", tmp_path / "two.npz", *flags) == 0
    assert read_campaign(tmp_path / "two.npz").tables["runs_used"]["run"].tolist() == ["run006", "run005"]

    with caplog.at_level(logging.ERROR, logger="quax"):
        assert quax_campaign("--runs", "run005", "run042", "--out", tmp_path / "x.h5", *flags) == 3
    assert "the workers hold no run 'run042' (they hold 5: run004, run005, run006, run007, run008)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="quax"):
        assert quax_campaign("--runs", "run005", "run006", "run005", "--out", tmp_path / "x.h5", *flags) == 2
    assert "run run005 given twice" in caplog.text
    assert not (tmp_path / "x.h5").exists()

    settings = Settings(web_port_base=int(flags[1]), workers=1)
    calls = []
    read_live(settings, None, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(k, 5) for k in range(1, 6)]
