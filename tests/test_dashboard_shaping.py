"""The dashboard's data shaping, without a browser: baseline and excess, waterfall, health figures."""

import io
import math

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from dashboard import shaping
from quax_faust.core import dsp, synth
from quax_faust.settings import Settings

SETTINGS = Settings()
N_BINS = SETTINGS.slice_len


def noise_run_mean(n_slices: int, seed: int = 1, tone_bin: int | None = None, tone_psd: float = 0.0) -> np.ndarray:
    """A run mean as the tables hold it: passband x (mean of n_slices exponential periodograms)."""
    rng = np.random.default_rng(seed)
    f = dsp.frequency_axis_hz(N_BINS, SETTINGS.sample_rate_hz)
    level = 1e-6 * synth.passband_power_gain(f, synth.SynthModel())
    mean = level * rng.gamma(n_slices, 1.0 / n_slices, N_BINS)
    if tone_bin is not None:
        mean[tone_bin] += tone_psd
    return mean


# --- runs and files --------------------------------------------------------------------------------

def test_choose_run_follows_the_newest_unless_one_is_wanted():
    runs = [{"run": "a", "last_completed_at_s": 100.0}, {"run": "b", "last_completed_at_s": 300.0},
            {"run": "c", "last_completed_at_s": None}]
    assert shaping.choose_run(runs) == "b"
    assert shaping.choose_run(runs, "a") == "a"
    assert shaping.choose_run(runs, "gone") == "b"
    assert shaping.choose_run([]) is None


def test_files_to_fetch_handles_out_of_order_folds_and_the_waterfall_window():
    # Files fold out of order: 7 arrived before 6. The page has seen 0..5 and 7.
    indices = [0, 1, 2, 3, 4, 5, 6, 7, 8]
    with_spectra, metadata_only = shaping.files_to_fetch(indices, {0, 1, 2, 3, 4, 5, 7}, n_rows=4)
    assert with_spectra == [6, 8] and metadata_only == []
    # A page opened on a long run: only the waterfall's rows come with spectra.
    with_spectra, metadata_only = shaping.files_to_fetch(list(range(100)), set(), n_rows=60)
    assert with_spectra == list(range(40, 100)) and metadata_only == list(range(40))
    assert shaping.waterfall_indices([5, 3, 9, 1], 2) == [5, 9]
    with pytest.raises(ValueError, match="at least one row"):
        shaping.waterfall_indices([1], 0)


# --- spectra and the waterfall ------------------------------------------------------------------

def test_bands_are_standard_errors_of_the_mean():
    std = np.full(4, 2.0)
    np.testing.assert_allclose(shaping.file_standard_error(std, 2730), 2.0 / math.sqrt(2730))
    lower, upper = shaping.band(np.array([1.0, 2.0]), np.array([0.1, 0.2]))
    np.testing.assert_allclose(lower, [0.9, 1.8])
    np.testing.assert_allclose(upper, [1.1, 2.2])
    with pytest.raises(ValueError, match="at least one slice"):
        shaping.file_standard_error(std, 0)


def test_waterfall_row_is_the_file_relative_to_the_run_average_in_percent():
    run = np.array([1.0, 2.0, 4.0, 0.0])
    file = np.array([1.02, 1.9, 4.0, 1.0])
    dev = shaping.relative_deviation_percent(file, run)
    np.testing.assert_allclose(dev[:3], [2.0, -5.0, 0.0], atol=1e-5)
    assert np.isnan(dev[3]), "no ratio where the run average is not positive"

    freq_khz = np.array([-1.0, -0.5, 0.0, 0.5])
    row = shaping.waterfall_row(7, dev, freq_khz)
    assert row["image"][0].shape == (1, 4) and row["image"][0].dtype == np.float32
    # The image spans the bins edge to edge and file 7 sits centred on y = 7.
    assert row["x"] == [-1.25] and row["dw"] == [2.0]
    assert row["y"] == [6.5] and row["dh"] == [1.0] and row["file_index"] == [7]
    merged = shaping.merge_rows([row, shaping.waterfall_row(8, dev, freq_khz)])
    assert merged["file_index"] == [7, 8] and len(merged["image"]) == 2


def test_waterfall_rows_carry_their_files_acquisition_time_in_utc_when_known():
    freq_khz = np.array([-1.0, 0.0])
    row = shaping.waterfall_row(7, np.zeros(2), freq_khz, 1_764_470_467.25)  # the file view's acquired_at_s
    assert row["acquired_at_s"] == [1_764_470_467.25] and row["acquired_utc"] == ["2025-11-30 02:41:07 UTC"]
    unknown = shaping.waterfall_row(8, np.zeros(2), freq_khz, None)  # null in the view: a file of before
    assert math.isnan(unknown["acquired_at_s"][0]) and unknown["acquired_utc"] == [""]
    assert set(row) == set(unknown) == set(shaping.WATERFALL_COLUMNS)  # one stream() takes both
    assert shaping.utc_label(float("nan")) == "" and shaping.utc_label(0.0) == "1970-01-01 00:00:00 UTC"
    rows = shaping.waterfall_rows({4: np.ones(2), 3: np.ones(2)}, np.ones(2), freq_khz, {4: 86_400.0})
    assert rows["file_index"] == [3, 4] and rows["acquired_utc"] == ["", "1970-01-02 00:00:00 UTC"]
    assert set(shaping.waterfall_rows({}, np.ones(2), freq_khz)) == set(shaping.WATERFALL_COLUMNS)


def test_whole_waterfall_is_redone_against_the_run_average_each_time_the_run_doubles():
    run = np.array([1.0, 2.0])
    rows = shaping.waterfall_rows({4: np.array([1.1, 2.0]), 3: np.array([0.9, 2.2])}, run, np.array([0.0, 1.0]))
    assert rows["file_index"] == [3, 4]
    np.testing.assert_allclose(rows["image"][0], [[-10.0, 10.0]], atol=1e-4)
    assert shaping.waterfall_rows({}, run, np.array([0.0, 1.0]))["image"] == []
    # A run growing file by file: the window is redone at 2, 4, 8, ... files, O(log n) times.
    normalised_at, redone = 1, []
    for n_files in range(1, 100):
        if shaping.waterfall_needs_renormalising(n_files, normalised_at):
            normalised_at = n_files
            redone.append(n_files)
    assert redone == [2, 4, 8, 16, 32, 64]


def test_waterfall_colour_scale_is_a_few_sigma_of_one_files_noise():
    # 2730 slices per real file: 1.91 % relative noise per bin, the scale is +-4 of those.
    assert shaping.waterfall_colour_limit_percent(2730) == pytest.approx(4 * 100 / math.sqrt(2730))
    # And that noise is what a file made of n exponential periodograms shows.
    rng = np.random.default_rng(3)
    run = np.full(20000, 2.0)
    file = run * rng.gamma(2730, 1 / 2730, run.size)
    scatter = np.std(shaping.relative_deviation_percent(file, run))
    assert scatter == pytest.approx(100 / math.sqrt(2730), rel=0.03)


# --- baseline and normalised excess ------------------------------------------------------------

def test_excess_of_pure_noise_over_a_curved_passband_is_standard_normal():
    n_slices = 20_000
    mean = noise_run_mean(n_slices)
    shown = shaping.baseline_and_excess(mean, n_slices, SETTINGS.sample_rate_hz, SETTINGS)
    baseline, excess = shown.baseline, shown.excess
    assert shown.noise_scale == 1.0
    assert baseline.shape == excess.shape == (N_BINS,)
    searched = np.isfinite(excess)
    # The band edges (anti-alias roll-off) and the DC bins are not searched, as in the analysis.
    f = dsp.frequency_axis_hz(N_BINS, SETTINGS.sample_rate_hz)
    assert not searched[np.abs(f) > SETTINGS.search_band_fraction * SETTINGS.sample_rate_hz / 2].any()
    assert not searched[np.abs(f) <= SETTINGS.dc_exclude_hz].any()
    x = excess[searched]
    n = x.size
    assert n > 2500
    assert abs(x.mean()) < 5 / math.sqrt(n)
    assert x.std() == pytest.approx(1.0, abs=5 * math.sqrt(2 / n))
    assert shaping.robust_scatter(x) == pytest.approx(1.0, abs=0.08)
    assert shaping.bins_above(excess, 5.0).size == 0
    # The baseline follows the passband to well within the noise of one bin.
    truth = 1e-6 * synth.passband_power_gain(f, synth.SynthModel())
    assert np.median(np.abs(baseline[searched] / truth[searched] - 1)) < 1 / math.sqrt(n_slices)


def test_an_injected_line_stands_out_in_the_excess_at_its_bin():
    n_slices = 20_000
    tone_bin = 1920  # +250 kHz
    clean = noise_run_mean(n_slices, seed=2)
    excess_clean = shaping.baseline_and_excess(clean, n_slices, SETTINGS.sample_rate_hz, SETTINGS).excess
    # A line of 20 sigma of one bin's noise.
    psd = 20 * clean[tone_bin] / math.sqrt(n_slices)
    line = noise_run_mean(n_slices, seed=2, tone_bin=tone_bin, tone_psd=psd)
    excess = shaping.baseline_and_excess(line, n_slices, SETTINGS.sample_rate_hz, SETTINGS).excess
    above = shaping.bins_above(excess, SETTINGS.excess_threshold_sigma)
    assert list(above) == [tone_bin]
    # The fit takes a little of the line into the baseline (its centre weight), not more.
    assert 17 < excess[tone_bin] - excess_clean[tone_bin] < 21


def test_a_strong_line_does_not_dig_holes_in_the_excess_around_it():
    # A demo-strength tone (60x the noise level) in a short run: the search bridges it in the fit.
    n_slices = 105
    tone_bin = 1920
    mean = noise_run_mean(n_slices, seed=6, tone_bin=tone_bin, tone_psd=6e-5)
    excess = shaping.baseline_and_excess(mean, n_slices, SETTINGS.sample_rate_hz, SETTINGS).excess
    assert excess[tone_bin] > 500
    around = np.r_[excess[tone_bin - 60:tone_bin - 1], excess[tone_bin + 2:tone_bin + 61]]
    assert np.all(np.abs(around) < 5), "the line's neighbours stay noise-like"


def test_repeated_files_widen_the_excess_and_the_threshold_follows():
    # A looped demo: 9 passes over the same files count 9x the slices they hold, so the excess
    # scatters 3 sigma wide; the search measures that and the panel scales its threshold by it.
    independent, counted = 2_000, 18_000
    mean = noise_run_mean(independent, seed=7)
    shown = shaping.baseline_and_excess(mean, counted, SETTINGS.sample_rate_hz, SETTINGS)
    assert shown.noise_scale == pytest.approx(3.0, rel=0.1)
    assert shaping.robust_scatter(shown.excess) == pytest.approx(3.0, rel=0.1)
    assert shaping.bins_above(shown.excess, SETTINGS.excess_threshold_sigma * shown.noise_scale).size == 0


def test_unreadable_bins_do_not_spread_through_the_baseline():
    n_slices = 5_000
    mean = noise_run_mean(n_slices, seed=4)
    mean[1000] = np.nan
    shown = shaping.baseline_and_excess(mean, n_slices, SETTINGS.sample_rate_hz, SETTINGS)
    baseline, excess = shown.baseline, shown.excess
    assert np.isnan(excess[1000])
    assert np.isfinite(baseline).all()
    assert np.isfinite(excess[990:1000]).all() and np.isfinite(excess[1001:1010]).all()


def test_robust_scatter_ignores_a_few_strong_lines():
    rng = np.random.default_rng(5)
    x = rng.standard_normal(5000)
    x[:10] = 100.0
    x[10:20] = np.nan
    assert shaping.robust_scatter(x) == pytest.approx(1.0, abs=0.05)
    assert math.isnan(shaping.robust_scatter(np.array([np.nan])))


def test_candidate_columns_from_the_analysis_view():
    empty = shaping.candidate_columns(None, 0.0)
    assert all(v == [] for v in empty.values())
    doc = {"run": "r", "threshold_sigma": 5.0, "candidates": [
        {"frequency_hz": 250_000.0, "significance": 12.5, "power": 4e-4, "first_seen_file": 3, "persistent": True},
        {"frequency_hz": -1000.0, "significance": 5.5, "power": None, "first_seen_file": 9, "persistent": False}]}
    cols = shaping.candidate_columns(doc, lo_frequency_hz=-1000.0)
    assert cols["frequency_hz"] == [250_000.0, -1000.0]
    assert cols["frequency_khz"] == pytest.approx([251.0, 0.0])
    assert cols["persistent"] == ["yes", "no"] and math.isnan(cols["power"][1])
    # a candidate that faded below threshold keeps a record with no current significance: not drawn
    doc["candidates"].append({"frequency_hz": 5e5, "significance": None, "power": None,
                              "first_seen_file": 1, "persistent": False, "above_threshold": False})
    assert shaping.candidate_columns(doc, 0.0)["frequency_hz"] == [250_000.0, -1000.0]


def test_the_axis_is_offset_from_the_runs_own_lo_not_the_setting():
    """A run recorded at 9.2 GHz is drawn around its LO whatever this dashboard's setting says;
    only a run without metadata (produced before metadata existed) falls back to the setting."""
    f_baseband = dsp.frequency_axis_hz(8, 2e6)
    doc = {"frequency_hz": list(9.2e9 + f_baseband), "metadata": {"lo_frequency_hz": 9.2e9, "operator": "A. R."}}
    lo = shaping.run_lo_frequency_hz(doc, fallback_hz=9.3e9)
    assert lo == 9.2e9
    assert shaping.frequency_khz(np.array(doc["frequency_hz"]), lo) == pytest.approx(f_baseband / 1e3)
    assert shaping.frequency_axis_label(lo) == "frequency − LO (kHz), LO = 9.2e+09 Hz"
    assert shaping.run_lo_frequency_hz({"metadata": {"operator": "A. R."}}, fallback_hz=9.3e9) == 9.3e9
    assert shaping.run_lo_frequency_hz({"frequency_hz": []}, fallback_hz=0.0) == 0.0
    assert shaping.frequency_axis_label(0.0) == "frequency (kHz)"


# --- downloads -----------------------------------------------------------------------------------

def test_run_spectrum_downloads_hold_the_tables_values():
    f = dsp.frequency_axis_hz(8, 2e6)
    mean = np.linspace(1e-6, 2e-6, 8)
    spec = shaping.RunSpectrum("r1", f, mean, mean / 100, mean, 10_000, 4)
    rows = np.loadtxt(io.BytesIO(spec.csv_bytes()), delimiter=",", skiprows=2)
    assert rows.shape == (8, 4)
    np.testing.assert_allclose(rows[:, 0], f)
    np.testing.assert_allclose(rows[:, 1], mean, rtol=1e-9)
    np.testing.assert_allclose(rows[:, 2], mean / 100, rtol=1e-9)
    npz = np.load(io.BytesIO(spec.npz_bytes()))
    np.testing.assert_array_equal(npz["run_mean"], mean)
    assert int(npz["n_slices_total"]) == 10_000 and str(npz["run"]) == "r1"


# --- health --------------------------------------------------------------------------------------

def metrics_text(slices: float, files: float, rejected: float, latencies=(), lag: dict | None = None) -> str:
    """A worker's /metrics exposition with the real metric names (prometheus-client)."""
    registry = CollectorRegistry()
    Counter("quax_slices_total", "", registry=registry).inc(slices)
    Counter("quax_files_completed_total", "", registry=registry).inc(files)
    rej = Counter("quax_rejected_messages_total", "", ["topic", "reason"], registry=registry)
    if rejected:
        rej.labels(topic="slices", reason="truncated").inc(rejected - 1)
        rej.labels(topic="spectra", reason="bad_magic").inc(1)
    hist = Histogram("quax_file_latency_seconds", "", registry=registry)
    for v in latencies:
        hist.observe(v)
    if lag is not None:
        gauge = Gauge("quax_consumer_lag_messages", "", ["partition"], registry=registry)
        for partition, value in lag.items():
            gauge.labels(partition=str(partition)).set(value)
    return generate_latest(registry).decode()


def test_parse_metrics_reads_the_throughput_counters_and_the_lag_gauge():
    c = shaping.parse_metrics(metrics_text(5460, 2, 3, latencies=(0.5, 1.5), lag={0: 4, 2: 6}))
    assert (c.slices, c.files_completed, c.rejected) == (5460, 2, 3)
    assert (c.latency_sum_s, c.latency_count) == (2.0, 2)
    assert c.consumer_lag_messages == 10
    assert shaping.parse_metrics(metrics_text(0, 0, 0)).consumer_lag_messages is None
    # only the slices topic's lag is converted into seconds of data
    registry = CollectorRegistry()
    gauge = Gauge("quax_consumer_lag_messages", "", ["topic", "partition"], registry=registry)
    gauge.labels(topic="slices", partition="0").set(3)
    gauge.labels(topic="spectra", partition="0").set(50)
    text = generate_latest(registry).decode()
    assert shaping.parse_metrics(text, "slices").consumer_lag_messages == 3


def test_rates_over_the_window_survive_a_worker_restart():
    rates = shaping.RateHistory(window_s=10.0)
    W = shaping.WorkerCounters
    assert all(math.isnan(v) for v in rates.rates())
    rates.add(0.0, {"a": W(slices=0, files_completed=0), "b": W(slices=1000, files_completed=1)})
    rates.add(4.0, {"a": W(slices=1365, files_completed=0), "b": W(slices=2365, files_completed=1)})
    # Worker b restarted: its counter fell to 1365, which is what it counted since.
    rates.add(8.0, {"a": W(slices=2730, files_completed=1), "b": W(slices=1365, files_completed=0)})
    files_per_s, slices_per_s = rates.rates()
    assert slices_per_s == pytest.approx((2730 + 1365 + 1365) / 8.0)
    assert files_per_s == pytest.approx(1 / 8.0)
    # Old readings leave the window.
    rates.add(20.0, {"a": W(slices=2730 + 2 * 2730, files_completed=3), "b": W(slices=1365, files_completed=0)})
    rates.add(21.0, {"a": W(slices=2730 + 2 * 2730, files_completed=3), "b": W(slices=1365, files_completed=0)})
    assert rates.rates()[1] == pytest.approx(2 * 2730 / 13.0)


def test_health_turns_bad_when_behind_real_time_or_a_worker_is_missing():
    W = shaping.WorkerCounters
    common = dict(files_per_s=0.2384, slices_per_s=651.0, slice_duration_s=SETTINGS.slice_duration_s,
                  slices_per_message=128, workers_expected=2, behind_s=4.194)
    ok = shaping.assess_health(last_file_latency_s=0.3, counters=[W(rejected=1), W(rejected=2)], **common)
    assert ok.ok and ok.consumer_lag_messages is None and ok.rejected_messages == 3
    assert ok.realtime_factor == pytest.approx(651.0 * 3072 / 2e6)

    slow = shaping.assess_health(last_file_latency_s=9.0, counters=[W(), W()], **common)
    assert not slow.ok and "latency" in slow.problems[0]

    # 30 messages of 128 slices waiting = 5.9 s of data: more than one file behind.
    lagging = shaping.assess_health(last_file_latency_s=0.3, counters=[W(consumer_lag_messages=10),
                                                                      W(consumer_lag_messages=20)], **common)
    assert lagging.consumer_lag_messages == 30
    assert lagging.consumer_lag_s == pytest.approx(30 * 128 * 3072 / 2e6)
    assert not lagging.ok and "waiting in Kafka" in lagging.problems[0]

    alone = shaping.assess_health(last_file_latency_s=0.3, counters=[W()], **common)
    assert not alone.ok and alone.workers_alive == 1 and "not answering" in alone.problems[0]

