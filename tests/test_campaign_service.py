"""``quax campaign-live`` on the real chain: the live campaign equals ``quax campaign --all``.

Three runs go through a real broker and two workers (two with their cavity, LOs a whole number of
bins apart; one without its cavity), and the service, a separate process, reads the spectra and
metadata topics. Its document must equal the offline analysis of the workers' tables exactly
(same fold, same order, same arithmetic); a run whose metadata grows enters the physics; a
malformed record is rejected and counted; a restart resumes from the saved state, not from the
topics' beginning, and gives the same result.
"""

from __future__ import annotations

import asyncio
import urllib.request
from dataclasses import replace

import numpy as np
import pytest

from quax_faust.exports.campaign import read_campaign
from quax_faust.ingest.producer import produce_directory
from quax_faust.search.axion_signal import Axion
from quax_faust.search.grand import grand_spectrum
from quax_faust.search.synthetic_campaign import CampaignPlan, raw_campaign_runs, synthetic_campaign
from quax_faust.tools.synth_cmd import write_raw_run
from quax_faust.tools import cli
from quax_faust.tools.launch import CampaignLive, wait_for_run
from tests.conftest import campaign_plan, campaign_records, produce_runs, write_synthetic_run
from tests.kafka_io import send_raw_async
from tests.progress import wait_processed

pytestmark = pytest.mark.broker
N_FILES, SLICES_PER_FILE = 2, 16
GRID = {"frequency_hz": "frequency_hz", "g2": "g2", "sigma": "sigma", "significance": "significance"}
LIMITS = {"g_limit_gev": "g_limit_gev", "g_sensitivity_gev": "g_sensitivity_gev", "ksvz_gev": "ksvz_gev",
          "dfsz_gev": "dfsz_gev"}


def _nan(values) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def assert_equals_offline(doc: dict, settings, path) -> None:
    """The document's grand spectrum, limits, runs and candidates equal `quax campaign --all`'s,
    once the workers have processed every record (run metadata too: the offline analysis reads
    their tables, the service the topics)."""
    wait_processed(settings)
    flags = ["--set", f"web_port_base={settings.web_port_base}", "--set", f"workers={settings.workers}",
             "--set", f"broker={settings.broker}"]
    assert cli.main(["campaign", "--all", "--out", str(path), "--force", *flags]) == 0
    t = read_campaign(path).tables
    for ours, theirs in GRID.items():
        np.testing.assert_array_equal(_nan(doc["grid"][ours]), t["grand"][theirs], err_msg=ours)
    for ours, theirs in LIMITS.items():
        np.testing.assert_array_equal(_nan(doc["grid"][ours]), t["exclusion"][theirs], err_msg=ours)
    assert [r["run"] for r in doc["runs_used"]] == t["runs_used"]["run"].tolist()
    assert [r["n_slices"] for r in doc["runs_used"]] == t["runs_used"]["n_slices"].tolist()
    assert [r["run"] for r in doc["runs_left_out"]] == t["runs_left_out"]["run"].tolist()
    assert [r["reason"] for r in doc["runs_left_out"]] == t["runs_left_out"]["reason"].tolist()
    assert [c["frequency_hz"] for c in doc["candidates"]] == t["candidates"]["frequency_hz"].tolist()


def test_live_campaign_equals_the_offline_analysis_grows_and_resumes(make_stack, tmp_path):
    settings, _workers = make_stack(workers=2, campaign_refresh_s=0.2, campaign_snapshot_s=0.5)
    records = campaign_records(settings, without_cavity="late")
    daq_dir = write_synthetic_run(tmp_path / "daq", N_FILES, SLICES_PER_FILE * settings.slice_len, seed=5)
    service = CampaignLive(settings, tmp_path / "campaign-live.log").start()
    try:
        doc = service.wait_for(lambda d: d["status"] == "no runs yet")  # serves before any run exists
        assert doc["files_folded"] == 0 and doc["grid"]["frequency_hz"] == []
        produce_runs(settings, daq_dir, records, N_FILES)
        doc = service.wait_for(lambda d: d["files_folded"] == 3 * N_FILES)
        assert [r["run"] for r in doc["runs_used"]] == ["step0", "step1"]
        assert [r["n_files"] for r in doc["runs_used"]] == [N_FILES, N_FILES]
        assert doc["runs_left_out"][0]["run"] == "late"
        assert "its metadata lacks cavity_frequency_hz, loaded_q" in doc["runs_left_out"][0]["reason"]
        assert sum(v is not None for v in doc["grid"]["significance"]) > 1000
        assert_equals_offline(doc, settings, tmp_path / "offline1.h5")

        # The late run's cavity is recorded with its next file: it enters the physics.
        more = write_synthetic_run(tmp_path / "more", N_FILES + 1, SLICES_PER_FILE * settings.slice_len, seed=6)
        for k in range(N_FILES):
            for side in "iq":
                (more / f"duck_{side}_{k:05d}.dat").unlink()
        late = campaign_plan(settings).metadata(2)  # its cavity too, at the same LO
        asyncio.run(produce_directory(settings, more, "late", "max", progress=False, metadata=late))
        wait_for_run(settings, "late", N_FILES + 1)
        doc = service.wait_for(lambda d: d["files_folded"] == 3 * N_FILES + 1 and not d["runs_left_out"])
        assert [r["run"] for r in doc["runs_used"]] == ["late", "step0", "step1"]
        assert doc["runs_used"][0]["n_slices"] == (N_FILES + 1) * SLICES_PER_FILE
        assert_equals_offline(doc, settings, tmp_path / "offline2.h5")

        # A malformed record is rejected, counted, and the fold goes on.
        asyncio.run(send_raw_async(settings.broker, settings.spectra_topic, b"late", b"not a spectrum"))
        doc = service.wait_for(lambda d: d["rejected"])
        assert list(doc["rejected"]) == ["spectra/" + next(iter(doc["rejected"])).split("/", 1)[1]]
        assert sum(doc["rejected"].values()) == 1 and doc["files_folded"] == 3 * N_FILES + 1
        with urllib.request.urlopen(settings.campaign_url + "/metrics", timeout=5) as r:
            metrics = r.read().decode()
        assert 'quax_campaign_runs{state="used"} 3.0' in metrics
        assert "quax_campaign_analysis_seconds_count" in metrics
        before = doc

        # Stop (the state is saved) and start again: it resumes from the saved offsets.
        assert service.stop() == 0
        state_file = settings.var_dir / "campaign" / f"state-{settings.app_id}.bin"
        assert state_file.is_file()
        service.start()
        after = service.wait_for(lambda d: d["version"] >= 1)
        assert after["next_offsets"] == before["next_offsets"] and after["files_folded"] == before["files_folded"]
        for key in ("grid", "runs_used", "runs_left_out", "candidates", "rejected"):
            assert after[key] == before[key], key
        log = (tmp_path / "campaign-live.log").read_text()
        assert f"reading {settings.spectra_topic} from offset {before['next_offsets']['spectra']}" in log
    finally:
        service.stop()


def test_an_axion_written_into_the_raw_files_is_found_live(make_stack, tmp_path):
    """Four runs at stepped LOs with an axion in their raw DAQ files (quax synth-campaign's writer),
    through the producer, the workers and the live campaign: the axion is the first candidate on
    the rescan list, at its frequency, with its coupling."""
    settings, _workers = make_stack(workers=2, campaign_refresh_s=0.2)
    n_files, n_samples = 4, 1 << 18
    plan = replace(CampaignPlan(), n_runs=4, n_slices=n_files * (n_samples // settings.slice_len))
    # sigma of g2 where all four runs overlap, from a drawn campaign of the same N: inject at 10 sigma
    drawn = grand_spectrum(synthetic_campaign(plan, seed=1))
    k = int(np.argmin(np.abs(drawn.frequency_hz - (plan.first_lo_hz + 270e3))))
    assert drawn.n_runs[k] == plan.n_runs
    axion = Axion(float(drawn.frequency_hz[k]) + 0.3 * drawn.bin_width_hz, 10 * float(drawn.sigma[k]))
    runs = raw_campaign_runs(plan, [axion], seed=7, run_prefix="raw")
    assert all(run.axions == (axion,) for run in runs)
    service = CampaignLive(settings, tmp_path / "campaign-live.log").start()
    try:
        for run in runs:
            write_raw_run(tmp_path / run.name, run, n_files, n_samples, settings.sample_rate_hz)
            asyncio.run(produce_directory(settings, tmp_path / run.name, run.name, "max", progress=False,
                                          metadata=run.metadata))
        doc = service.wait_for(lambda d: d["files_folded"] == plan.n_runs * n_files)
        assert [r["run"] for r in doc["runs_used"]] == [run.name for run in runs] and not doc["runs_left_out"]
        best = doc["candidates"][0]
        print(f"injected g2 {axion.g2:.0f} at {axion.frequency_hz:.1f} Hz: found {best['g2']:.0f} +- "
              f"{best['sigma']:.0f} ({best['significance']:.2f} sigma) at {best['frequency_hz']:.1f} Hz")
        assert abs(best["frequency_hz"] - axion.frequency_hz) <= 8 * drawn.bin_width_hz
        assert best["significance"] > 6
        assert best["g2"] == pytest.approx(axion.g2, abs=3 * best["sigma"])
        assert {r["run"] for r in best["runs"]} == {run.name for run in runs}
    finally:
        service.stop()


def test_stopped_while_waiting_for_the_broker_it_exits_cleanly(tmp_path):
    """`make demo` starts the live campaign beside the broker: until the chain's topics exist it
    waits and says so, and a Ctrl-C meanwhile ends it with exit 0, not a connection error."""
    from quax_faust.settings import Settings
    from quax_faust.tools.launch import free_port

    settings = Settings(broker=f"127.0.0.1:{free_port()}", campaign_port=free_port(), var_dir=tmp_path / "var")
    service = CampaignLive(settings, tmp_path / "campaign-live.log").start()
    try:
        doc = wait_until_served(service)
        assert doc["status"] == "starting" and doc["files_folded"] == 0
    finally:
        code = service.stop()
    log = (tmp_path / "campaign-live.log").read_text()
    assert code == 0, log
    assert "Traceback" not in log and "KafkaConnectionError" not in log, log


def wait_until_served(service: CampaignLive) -> dict:
    """The 503 answer of a service that has not analysed anything yet."""
    import json
    import time
    import urllib.error

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(service.settings.campaign_url + "/campaign/", timeout=5)
        except urllib.error.HTTPError as exc:
            if exc.code == 503:
                return json.loads(exc.read())
            raise
        except OSError:
            time.sleep(0.2)
    raise AssertionError("the live campaign did not answer within 60 s")
