"""The detector figures the alerts watch (quax_faust/search/detector_figures.py), tested like the
physics (no broker): white noise of known density gives its in-band power and noise level, a tone
adds its power A**2 to the first and leaves the second alone, a gain scales both, and the search's
counts say what the search found."""

from __future__ import annotations

import numpy as np
import pytest

from quax_faust.core import dsp, synth
from quax_faust.search import candidates, detector_figures, spectrum_search
from quax_faust.search_settings import config_from_settings
from quax_faust.settings import Settings

FS, L = 2e6, 3072
CONFIG = config_from_settings(Settings())
BAND = detector_figures.in_band(L, FS, CONFIG.search_band_fraction, CONFIG.dc_exclude_hz)
N_SLICES = 200


def file_mean(samples: np.ndarray) -> np.ndarray:
    """A file's mean periodogram (V**2/Hz, fftshifted), as the workers compute it."""
    sums = dsp.power_sums(samples[: samples.size // L * L].reshape(-1, L), FS)
    return sums.power_sum / sums.n_slices


def white_noise(rng, std: float = 1.0) -> np.ndarray:
    """Complex white noise, std per channel: PSD 2 std**2 / FS."""
    return (rng.standard_normal(N_SLICES * L) + 1j * rng.standard_normal(N_SLICES * L)).astype(np.complex64) * std


def test_the_band_is_the_searched_band():
    f = dsp.frequency_axis_hz(L, FS)
    assert np.array_equal(BAND, (np.abs(f) <= 0.85 * FS / 2) & (np.abs(f) > 2000.0))
    assert 2600 <= BAND.sum() <= 2620  # ~2600 bins, as docs/analysis.md counts the trials
    with pytest.raises(ValueError):
        BAND[0] = True  # shared between calls: read-only


def test_white_noise_gives_its_density_and_power_in_the_band():
    figures = detector_figures.file_figures(file_mean(white_noise(np.random.default_rng(1), std=0.5)), FS, BAND)
    psd = 2 * 0.5 ** 2 / FS
    expected_power = psd * BAND.sum() * FS / L
    # sum of ~2600 bins of a mean of 200 exponentials: relative scatter 1/sqrt(520 000)
    assert figures.inband_power_v2 == pytest.approx(expected_power, rel=5 / np.sqrt(N_SLICES * BAND.sum()))
    # the median of Gamma(N, 1/N) is 1 - 1/(3N) + ...; its scatter over 2600 bins ~ 1.25/sqrt(N*2600),
    # 0.0017: within 4 of them
    assert figures.noise_psd == pytest.approx(psd * (1 - 1 / (3 * N_SLICES)), rel=0.007)


def test_a_tone_adds_its_power_and_leaves_the_noise_level_alone():
    noise = white_noise(np.random.default_rng(2))
    t = np.arange(noise.size) / FS
    amplitude, tone_hz = 0.05, 300 * FS / L  # on a bin centre: all its power in one bin
    with_tone = noise + (amplitude * np.exp(2j * np.pi * tone_hz * t)).astype(np.complex64)
    quiet = detector_figures.file_figures(file_mean(noise), FS, BAND)
    loud = detector_figures.file_figures(file_mean(with_tone), FS, BAND)
    # Cross terms of the tone with the noise average out over 200 slices to ~2 A sigma/sqrt(N*L)
    assert loud.inband_power_v2 - quiet.inband_power_v2 == pytest.approx(amplitude ** 2, rel=0.05)
    assert loud.noise_psd == pytest.approx(quiet.noise_psd, rel=1e-3)


def test_a_gain_scales_power_and_noise_and_the_step_and_ratio_say_so():
    samples = synth.synth_file(0, N_SLICES * L, synth.SynthModel(), seed=3)
    before = detector_figures.file_figures(file_mean(samples), FS, BAND)
    after = detector_figures.file_figures(file_mean(samples * np.float32(np.sqrt(1.15))), FS, BAND)
    step = detector_figures.relative_step(before.inband_power_v2, after.inband_power_v2)
    assert step == pytest.approx(0.15, rel=1e-4)
    assert detector_figures.relative_step(after.inband_power_v2, before.inband_power_v2) == pytest.approx(
        1 - 1 / 1.15, rel=1e-4)
    assert detector_figures.noise_ratio(after, before) == pytest.approx(1.15, rel=1e-4)
    assert detector_figures.noise_ratio(before, before) == 1.0
    # the synthetic passband drifts 2 % over 50 files: consecutive files differ by far less than 10 %
    model = synth.SynthModel()
    powers = [detector_figures.file_figures(file_mean(synth.synth_file(k, 20 * L, model, seed=3)), FS,
                                            BAND).inband_power_v2 for k in range(0, 30, 3)]
    assert max(detector_figures.relative_step(a, b) for a, b in zip(powers, powers[1:])) < 0.02


def test_bad_inputs_say_what_is_wrong():
    with pytest.raises(ValueError, match="shape"):
        detector_figures.file_figures(np.ones(1024), FS, BAND)
    with pytest.raises(ValueError, match="positive"):
        detector_figures.relative_step(0.0, 1.0)
    with pytest.raises(ValueError, match="positive"):
        detector_figures.noise_ratio(detector_figures.FileFigures(1.0, 1.0), detector_figures.FileFigures(1.0, 0.0))


def test_search_counts_follow_a_line_until_it_is_persistent():
    rng = np.random.default_rng(4)
    gain = synth.passband_power_gain(dsp.frequency_axis_hz(L, FS), synth.SynthModel()) * 2 / FS
    line = np.zeros(L)
    line[L // 2 + 400] = 40 * gain[L // 2 + 400] / np.sqrt(N_SLICES)  # ~40 sigma in one bin
    doc, seen = None, []
    for k in range(CONFIG.persist_searches + 1):
        n = N_SLICES * (k + 1)
        mean = gain * rng.gamma(n, 1.0 / n, size=L) + line
        result = spectrum_search.search_spectrum(mean, n, FS, config=CONFIG)
        doc, changed = candidates.update_candidates(doc, result, "r", k, k + 1, CONFIG.persist_searches)
        seen.append(detector_figures.search_figures(result, doc, changed, CONFIG.persist_searches))
    assert all(s.bins_over_threshold >= 1 and s.candidates == 1 for s in seen)
    assert [s.persistent_candidates for s in seen] == [0] * (CONFIG.persist_searches - 1) + [1, 1]
    assert [s.turned_persistent for s in seen] == [0] * (CONFIG.persist_searches - 1) + [1, 0]
    # pure noise: nothing over the threshold
    quiet = spectrum_search.search_spectrum(gain * rng.gamma(N_SLICES, 1.0 / N_SLICES, size=L), N_SLICES, FS,
                                            config=CONFIG)
    doc, changed = candidates.update_candidates(None, quiet, "q", 0, 1, CONFIG.persist_searches)
    assert detector_figures.search_figures(quiet, doc, changed, CONFIG.persist_searches) == \
        detector_figures.SearchFigures(0, 0, 0, 0)
