"""Axions in raw DAQ data (`quax synth --axion`, `quax synth-campaign`), no broker.

An axion is Gaussian noise too: a run with one is noise whose density is multiplied by (1 + s(f)),
s the axion's density over k_B T_sys. Averaged into the chain's 651 Hz bins the relative excess is
g2 a_j of the campaign analysis (run_excess.py); the raw files are averaged here by core.dsp, the
chain's own Welch average, and a small raw campaign goes through quax_faust.search.grand.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from quax_faust.core import daq, dsp, run_meta, synth
from quax_faust.search import rescan
from quax_faust.search.axion import Cavity, halo_line_cdf
from quax_faust.search.axion_signal import Axion, axion_periodogram_excess, axion_psd_excess, axion_rectangular_excess
from quax_faust.search.grand import grand_spectrum
from quax_faust.search.run_excess import CampaignConfig, RunSpectrum, run_response
from quax_faust.search.synthetic_campaign import QUAX_LIKE_CAVITY, CampaignPlan, raw_campaign_runs
from quax_faust.tools import cli
from quax_faust.tools.synth_cmd import METADATA_FILE, write_raw_run

FS, L = 2e6, 3072
BIN_HZ = FS / L
N_SAMPLES = 1 << 20  # 341 slices per file
FREQ = dsp.frequency_axis_hz(L, FS)
LO = 10.4e9
METADATA = {"lo_frequency_hz": LO, **vars(QUAX_LIKE_CAVITY), "cavity_frequency_hz": LO + 200e3}
PLAN = CampaignPlan(n_runs=4, n_bins=L, sample_rate_hz=FS)


def average(samples_of_files) -> tuple[np.ndarray, int]:
    """The run average (fftshifted, V**2/Hz) and N over the whole slices of the files' samples."""
    total, n = np.zeros(L), 0
    for samples in samples_of_files:
        sums = dsp.power_sums(daq.whole_slices(samples, L), FS)
        total += sums.power_sum
        n += sums.n_slices
    return total / n, n


def read_run(directory: Path) -> RunSpectrum:
    """A run directory written by synth-campaign as the campaign analysis takes it."""
    pairs, problems = daq.scan_dir(directory)
    assert not problems
    mean, n = average(daq.read_pair(pair) for pair in pairs)
    return RunSpectrum(directory.name, mean, n, FS, run_meta.read_file(directory / METADATA_FILE))


def boxcar_expectation(excess: synth.PsdExcess, model: synth.SynthModel) -> np.ndarray:
    """Expected relative excess per slice bin: the density (1 + s) times the passband, seen through
    a boxcar slice of L samples (the Fejer kernel sin(pi L nu)**2 / (L sin(pi nu)**2)), over the
    passband alone. (n_bins,), fftshifted."""
    k = (excess.first_bin + np.arange(excess.relative_excess.size)) % excess.n_samples
    fine = np.where(k >= excess.n_samples // 2, k - excess.n_samples, k) * FS / excess.n_samples
    weight = excess.relative_excess * synth.passband_power_gain(fine, model)
    out = np.zeros(L)
    for j in np.flatnonzero(np.abs(FREQ - fine.mean()) < 250e3):
        nu = (fine - FREQ[j]) / FS
        kernel = np.sin(np.pi * L * nu) ** 2 / (L * np.maximum(np.sin(np.pi * nu) ** 2, 1e-300))
        kernel[np.abs(nu) < 1e-12] = L
        out[j] = np.sum(weight * kernel) / excess.n_samples / synth.passband_power_gain(FREQ[j:j + 1], model)[0]
    return out


# --- one run -------------------------------------------------------------------------------------

def test_an_axion_in_raw_data_is_the_expected_excess_in_the_right_bins(tmp_path):
    """`quax synth --axion` on a run's metadata: the run average over the same noise without the
    axion (same seed) is 1 + g2 a_j, a_j = P_KSVZ L Lq / (k_B T_sys b) of run_excess.py, within
    the noise 1/sqrt(N) for rectangular bins' Lq; and exactly (to the ratio's own scatter) the
    boxcar periodogram's expectation of the injected density, which is the windowed Lq's
    (axion_periodogram_excess, what the campaign analysis expects)."""
    meta_file = tmp_path / "run.toml"
    meta_file.write_text("\n".join(f"{key} = {value!r}" for key, value in METADATA.items()))
    axion = Axion(float(LO + FREQ[1840] + 0.3 * BIN_HZ), 1e4)
    common = ["--files", "4", "--samples", str(N_SAMPLES), "--seed", "5", "--meta-file", str(meta_file)]
    assert cli.main(["synth", "--out", str(tmp_path / "axion"), *common, "--axion", f"{axion.frequency_hz!r}:1e4",
                     "--meta-out", str(tmp_path / "axion" / "out.toml")]) == 0
    assert cli.main(["synth", "--out", str(tmp_path / "noise"), *common]) == 0
    with_axion, n = average(daq.read_pair(p) for p in daq.scan_dir(tmp_path / "axion")[0])
    noise, _ = average(daq.read_pair(p) for p in daq.scan_dir(tmp_path / "noise")[0])
    measured = with_axion / noise - 1
    assert n == 4 * (N_SAMPLES // L)

    response = run_response(Cavity.from_metadata(METADATA), LO, L, FS, CampaignConfig())
    lower = LO + FREQ - BIN_HZ / 2 - axion.frequency_hz
    share = halo_line_cdf(lower + BIN_HZ, axion.frequency_hz) - halo_line_cdf(lower, axion.frequency_hz)
    expected = axion.g2 * response.gain * share  # g2 a_j
    line = np.flatnonzero(expected > 0)
    assert line[0] == 1840 and np.argmax(measured) == np.argmax(expected)
    assert expected.max() > 8 / np.sqrt(n)  # a strong axion: the test has power
    np.testing.assert_allclose(measured[line[0]:line[0] + 40], expected[line[0]:line[0] + 40], atol=1 / np.sqrt(n))
    window = slice(line[0] - 20, line[0] + 60)
    assert measured[window].sum() == pytest.approx(expected[window].sum(), rel=0.01)
    assert np.all(np.abs(measured[:line[0] - 3]) < 0.02 * expected.max())  # nothing below the line
    assert np.all(np.abs(measured[line[0] + 120:]) < 0.005 * expected.max())
    # The whole difference from g2 a_j is the slices' boxcar window smearing the line's sharp onset.
    excess = axion_psd_excess([axion], METADATA, N_SAMPLES, FS)
    np.testing.assert_allclose(measured, boxcar_expectation(excess, synth.SynthModel()), atol=2e-3)
    windowed = axion_periodogram_excess(LO, L, FS, Cavity.from_metadata(METADATA), axion)
    np.testing.assert_allclose(measured, windowed, atol=2e-3)
    assert windowed[line[0] - 1] > 0.02 * windowed.max()  # the window's leak below the line's bin
    assert run_meta.read_file(tmp_path / "axion" / "out.toml") == {**METADATA, "sample_rate_hz": FS}


def test_a_psd_excess_colours_the_same_noise_on_its_band_only():
    """The band may wrap from the last FFT index to 0; outside it the file is unchanged, and
    without an excess synth_file is what it always was."""
    n, model = 4096, synth.SynthModel()
    s = np.array([0.5, 1.0, 3.0, 0.25])
    plain = synth.synth_file(2, n, model, seed=9)
    coloured = synth.synth_file(2, n, model, seed=9, excess=synth.PsdExcess(n, n - 2, s))
    ratio = np.abs(np.fft.fft(coloured)) / np.abs(np.fft.fft(plain))
    np.testing.assert_allclose(ratio[[n - 2, n - 1, 0, 1]], np.sqrt(1 + s), rtol=1e-4)
    np.testing.assert_allclose(np.delete(ratio, [n - 2, n - 1, 0, 1]), 1.0, rtol=1e-4)
    with pytest.raises(ValueError, match="finite and >= -1"):
        synth.PsdExcess(n, 0, np.array([-2.0]))
    with pytest.raises(ValueError, match="do not fit a file of 4096 samples"):
        synth.PsdExcess(n, n, s)
    with pytest.raises(ValueError, match="applied to a spectrum of shape"):
        synth.synth_file(0, 2 * n, model, excess=synth.PsdExcess(n, 0, s))


def test_the_windowed_expectation_is_the_raw_datas_and_recovers_its_g2():
    """Noise-free: campaigns of the exact expectation of raw data (the injected density seen
    through the slices' boxcar window), of the windowed expectation the synthetic campaigns draw
    from, and of rectangular bins (the line's power between each bin's edges). The first two are
    equal per bin (the line's body to 1e-3) and the grand spectrum recovers their g2 (0.985-1.005,
    the filter averaging over the position in the bin); rectangular bins lack the
    window's leak of the line's sharp onset into the bins around it, 3.5 % of the g2."""
    model = synth.SynthModel()
    passband = synth.passband_power_gain(FREQ, model)
    reference = grand_spectrum([RunSpectrum(r.name, passband, 1, FS, r.metadata) for r in raw_campaign_runs(PLAN)])
    k = int(np.argmin(np.abs(reference.frequency_hz - (PLAN.first_lo_hz + 270e3))))
    for position in (0.05, 0.5):
        axion = Axion(float(reference.frequency_hz[k] + (position - 0.5) * BIN_HZ), 4000.0)
        rectangular, windowed, boxcar = [], [], []
        for run in raw_campaign_runs(PLAN, [axion]):
            lo, cavity = run.metadata["lo_frequency_hz"], Cavity.from_metadata(run.metadata)
            rectangular.append(RunSpectrum(run.name, passband * (1 + axion_rectangular_excess(
                lo + FREQ, BIN_HZ, cavity, axion)), 1, FS, run.metadata))
            drawn = axion_periodogram_excess(lo, L, FS, cavity, axion)
            windowed.append(RunSpectrum(run.name, passband * (1 + drawn), 1, FS, run.metadata))
            expected = boxcar_expectation(axion_psd_excess([axion], run.metadata, N_SAMPLES, FS), model)
            # Equal but for the cavity Lorentzian, which the expectation takes at the bin centre
            # (as a_j does) and raw data at each frequency of the line: it moves the leak's tails.
            body = expected > 0.3 * expected.max()
            np.testing.assert_allclose(drawn[body], expected[body], rtol=1e-3)
            np.testing.assert_allclose(drawn, expected, atol=3e-3 * expected.max())
            boxcar.append(RunSpectrum(run.name, passband * (1 + expected), 1, FS, run.metadata))
        g_rectangular, g_windowed, g_boxcar = (grand_spectrum(runs).g2[k] / axion.g2
                                               for runs in (rectangular, windowed, boxcar))
        print(f"axion at {position:.2f} of its bin: g2 found / injected {g_boxcar:.4f} (raw data), "
              f"{g_windowed:.4f} (windowed expectation), {g_rectangular:.4f} (rectangular bins)")
        assert g_boxcar == pytest.approx(1.0, abs=0.015 if position < 0.1 else 0.006)
        assert g_windowed == pytest.approx(g_boxcar, abs=5e-4)
        assert g_boxcar / g_rectangular == pytest.approx(0.965, abs=0.01)


# --- a raw campaign ------------------------------------------------------------------------------

def campaign_in_memory(seed: int, n_files: int) -> list[RunSpectrum]:
    """A raw campaign of PLAN without axions, its files synthesised and averaged in memory."""
    model = synth.SynthModel()
    runs = []
    for run in raw_campaign_runs(PLAN, seed=seed):
        mean, n = average(synth.synth_file(k, N_SAMPLES, model, run.seed) for k in range(n_files))
        runs.append(RunSpectrum(run.name, mean, n, FS, run.metadata))
    return runs


def test_a_raw_campaign_finds_the_injected_axion_and_pure_noise_is_standard_normal(tmp_path):
    """Pure noise: the grand spectrum's significances have mean 0 and variance 1. An axion written
    into the raw files of 4 runs (synth-campaign's writer) at 10 sigma is on the rescan list at its
    frequency, with g2 equal to the injected one within 3 sigma."""
    noise = [grand_spectrum(campaign_in_memory(seed, 4)) for seed in range(6)]
    x = np.concatenate([g.significance[g.covered] for g in noise])
    print(f"pure noise: {x.size} candidates, mean {x.mean():.3f}, variance {x.var():.3f}")
    assert x.size > 10_000
    assert abs(x.mean()) < 0.12
    assert x.var() == pytest.approx(1.0, abs=0.15)
    assert all(0.9 < use.noise_ratio < 1.1 for g in noise for use in g.runs)

    g = noise[0]
    k = int(np.argmin(np.abs(g.frequency_hz - (PLAN.first_lo_hz + 270e3))))
    assert g.n_runs[k] == PLAN.n_runs
    injected = Axion(g.frequency_hz[k] + 0.3 * BIN_HZ, 10 * g.sigma[k])
    runs = raw_campaign_runs(PLAN, [injected], seed=100)
    assert all(run.axions == (injected,) for run in runs)
    for run in runs:
        write_raw_run(tmp_path / run.name, run, 4, N_SAMPLES, FS)
    found = grand_spectrum([read_run(tmp_path / run.name) for run in runs])
    assert not found.left_out
    k = int(np.argmin(np.abs(found.frequency_hz - injected.frequency_hz)))
    print(f"injected g2 {injected.g2:.0f}: found {found.g2[k]:.0f} +- {found.sigma[k]:.0f} "
          f"({found.significance[k]:.2f} sigma)")
    assert found.g2[k] == pytest.approx(injected.g2, abs=3 * found.sigma[k])
    entries = rescan.rescan_list(found)
    near = [e for e in entries if abs(e.frequency_hz - injected.frequency_hz) <= found.config.line_bins / 2 * BIN_HZ]
    assert near and near[0] is entries[0], [(e.frequency_hz, e.significance) for e in entries]
    assert near[0].significance > 6


# --- the commands --------------------------------------------------------------------------------

def test_synth_campaign_writes_runs_with_the_metadata_produce_reads(tmp_path, capsys):
    upper = PLAN.first_lo_hz + 2 * 77 * BIN_HZ + 0.95e6  # beyond run 0's band, in runs 1 and 2
    assert cli.main(["synth-campaign", "--out", str(tmp_path), "--runs", "3", "--files", "2", "--samples", "8192",
                     "--axion", f"{upper}:100", "--axion", "10400200000:50", "--cavity-offset-hz", "150e3"]) == 0
    out = capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run000", "run001", "run002"]
    for index in range(3):
        directory = tmp_path / f"run{index:03d}"
        fields = run_meta.read_file(directory / "run.toml")
        lo = PLAN.first_lo_hz + index * 77 * BIN_HZ
        assert fields == {**vars(QUAX_LIKE_CAVITY), "lo_frequency_hz": lo, "cavity_frequency_hz": lo + 150e3,
                          "sample_rate_hz": FS}
        pairs, problems = daq.scan_dir(directory)
        assert [p.file_index for p in pairs] == [0, 1] and not problems
        assert daq.check_pair(pairs[0]) == 8192
        assert f"quax produce --source {directory} --run run{index:03d} --meta-file {directory / 'run.toml'}" in out
        axions = "10400200000.0 Hz g2 50" if index == 0 else f"{upper:.1f} Hz g2 100, 10400200000.0 Hz g2 50"
        assert f"run{index:03d}: LO {lo:.1f} Hz" in out and f"axions: {axions}" in out
    # Written again, the runs would mix old pairs with new: refused before anything is written.
    assert cli.main(["synth-campaign", "--out", str(tmp_path), "--runs", "3", "--files", "1", "--samples", "8192"]) == 3


@pytest.mark.parametrize("spec", ["10.4e9", "x:1", "10.4e9:-5", "10.4e9:nan", ":3", "10.4e9:"])
def test_a_bad_axion_spec_is_a_usage_error(spec, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["synth", "--out", str(tmp_path), "--axion", spec])
    assert exit_.value.code == 2
    assert f"argument --axion: {spec!r}: expected FREQ_HZ:G2" in capsys.readouterr().err


def test_an_axion_needs_the_lo_and_the_cavity_in_its_band(tmp_path, caplog):
    with caplog.at_level(logging.ERROR, logger="quax"):
        assert cli.main(["synth", "--out", str(tmp_path), "--files", "1", "--samples", "8192",
                         "--meta", "lo_frequency_hz=10.4 GHz", "--meta", "loaded_q=1e5", "--axion", "10.4002e9:10"]) == 2
        assert ("--axion needs the run's LO and cavity: an axion's signal needs the run's cavity_frequency_hz, "
                "coupling_beta, b_field_t, volume_m3, form_factor, t_sys_k") in caplog.text
        caplog.clear()
        meta = [item for key, value in METADATA.items() for item in ("--meta", f"{key}={value!r}")]
        assert cli.main(["synth", "--out", str(tmp_path), "--files", "1", "--samples", "8192", *meta,
                         "--axion", "10.5e9:10"]) == 2
        assert "--axion 10500000000.0:10: its line lies outside the band LO +- fs/2" in caplog.text
        caplog.clear()
        assert cli.main(["synth-campaign", "--out", str(tmp_path), "--runs", "2", "--axion", "9e9:10"]) == 2
        assert "--axion 9000000000.0:10: no run's band reaches it" in caplog.text
    assert not daq.scan_dir(tmp_path)[0] and not list(tmp_path.iterdir())  # nothing written


def test_synth_campaign_at_a_pace_keeps_each_runs_newest_pairs_and_writes_its_metadata_first(tmp_path):
    """The demo's emulator (ops/demo/produce.sh): --pace, --keep and a tone, per run."""
    assert cli.main(["synth-campaign", "--out", str(tmp_path), "--runs", "2", "--files", "5", "--samples", "8192",
                     "--pace", "1000", "--keep", "2", "--tone-hz", "830000", "--tone-amplitude", "0.02",
                     "--run-prefix", "d-s"]) == 0
    for run in ("d-s000", "d-s001"):
        pairs, _ = daq.scan_dir(tmp_path / run)
        assert [p.file_index for p in pairs] == [3, 4]  # the newest two of five
        assert run_meta.read_file(tmp_path / run / METADATA_FILE)["lo_frequency_hz"] > 10e9
    samples = daq.read_channels(daq.pair_paths(tmp_path / "d-s000", 4))
    model = synth.SynthModel(tones=((830_000.0, 0.02),))
    seed = raw_campaign_runs(CampaignPlan(n_runs=2), (), seed=0, run_prefix="d-s")[0].seed
    np.testing.assert_array_equal(samples[0] + 1j * samples[1], synth.synth_file(4, 8192, model, seed))
