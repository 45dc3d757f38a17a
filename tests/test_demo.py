"""The demo is honest: its DAQ emulator (`quax synth --pace --keep`, ops/demo/produce.sh) writes new
noise in every file, so the dashboard's excess panel keeps a 1-sigma scatter however long the run;
the 8 files it used to loop over gave 1.5 sigma after 18 files."""

from __future__ import annotations

import time

import numpy as np
import pytest

from dashboard.shaping import baseline_and_excess, robust_scatter
from quax_faust.core import daq, dsp, synth
from quax_faust.settings import REPO_DIR, Settings
from quax_faust.tools import cli

DEMO_TONE = ((830_000.0, 0.02),)  # ops/demo/produce.sh's line (outside the campaign's band, inside the live search's)
N_FILES = 18


def excess_scatter(file_indices: list[int], n_samples: int, seed: int) -> float:
    """Robust scatter of the dashboard's normalised excess of the run average of these files."""
    settings = Settings()
    model = synth.SynthModel(tones=DEMO_TONE)
    sums = {}
    for k in set(file_indices):
        slices = daq.whole_slices(synth.synth_file(k, n_samples, model, seed), settings.slice_len)
        sums[k] = dsp.power_sums(slices, settings.sample_rate_hz)  # fftshifted, like the views
    power_sum = sum(sums[k].power_sum for k in file_indices)
    n_slices = sum(sums[k].n_slices for k in file_indices)
    excess = baseline_and_excess(power_sum / n_slices, n_slices, settings.sample_rate_hz, settings).excess
    return robust_scatter(excess)


def test_fresh_files_keep_the_excess_at_one_sigma_where_looped_files_do_not():
    n_samples = 3072 * 100  # 100 slices per file: the statistics do not care how many
    fresh = excess_scatter(list(range(N_FILES)), n_samples, seed=7)
    looped = excess_scatter([k % 8 for k in range(N_FILES)], n_samples, seed=7)
    # ~2600 searched bins: a robust scatter has a standard error of about 0.02.
    assert fresh == pytest.approx(1.0, abs=0.06)
    # 18 files of 8: weights 3,3,2,...,2, variance 42/18 of the honest one.
    assert looped == pytest.approx(np.sqrt(42 / 18), abs=0.1)


def test_the_emulator_writes_at_its_pace_and_keeps_a_window_of_its_own_pairs(tmp_path):
    stranger = daq.write_pair(tmp_path, 0, np.ones(4096, np.complex64))  # not the emulator's
    pace = 4096 / 2e6 / 0.05  # one 4096-sample file every 0.05 s
    started = time.monotonic()
    assert cli.main(["synth", "--out", str(tmp_path), "--files", "6", "--first-index", "10",
                     "--samples", "4096", "--pace", str(pace), "--keep", "2"]) == 0
    assert time.monotonic() - started >= 5 * 0.05
    pairs, problems = daq.scan_dir(tmp_path)
    assert [p.file_index for p in pairs] == [0, 14, 15] and not problems
    assert stranger.i_path.exists()


def test_the_demo_runs_the_emulator_and_a_following_producer():
    script = (REPO_DIR / "ops" / "demo" / "produce.sh").read_text()
    assert "quax synth-campaign --out \"$daq\" --runs \"$steps\" --files \"$per_step\" --pace" in script
    assert "--keep" in script
    assert 'quax produce --source "$daq/$name" --run "$name" --meta-file "$daq/$name/run.toml" --follow' in script
    assert "--loop" not in script


def test_the_demos_processes_listen_on_distinct_default_ports():
    """`make demo` runs every process of the Procfile on its default port: none may take another's
    (the Alertmanager once sat on 9093, the broker's controller port, and the broker did not start)."""
    import re

    settings = Settings()
    broker = int(re.search(r"port=\$\{2:-\$\{KAFKA_PORT:-(\d+)\}\}", (REPO_DIR / "ops/kafka/broker.sh").read_text()).group(1))
    alertmanager = int(re.search(r"port=\$\{ALERTMANAGER_PORT:-(\d+)\}",
                                 (REPO_DIR / "ops/alertmanager/run.sh").read_text()).group(1))
    ports = {"broker": broker, "broker's controller": broker + 1, "alertmanager": alertmanager,
             "prometheus": settings.prometheus_port, "producer metrics": settings.producer_metrics_port,
             "dashboard": settings.dashboard_port, "live campaign": settings.campaign_port,
             **{f"worker {k}": settings.web_port_base + k for k in range(settings.workers)}}
    taken = {}
    for name, port in ports.items():
        assert port not in taken, f"{name} and {taken.get(port)} both on port {port}"
        taken[port] = name
    procfile = (REPO_DIR / "Procfile").read_text()
    for process in ("broker", "worker0", "producer", "campaign", "prometheus", "alertmanager", "dashboard"):
        assert re.search(rf"^{process}: ", procfile, re.M), process
