"""The campaign analysis, pure logic (no broker): expected signal, grand spectrum, candidates, limits.

Synthetic campaigns (quax_faust/search/synthetic_campaign.py): 12 one-hour runs of 3072 bins of
651 Hz, LO stepped by 50 kHz (half a cavity linewidth at Q_L = 1e5, 10.4 GHz), each run's average
drawn from its exact distribution. Seeded; the whole file runs in a few seconds.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy import integrate, special, stats

from quax_faust.search import axion, exclusion, rescan
from quax_faust.search.grand import grand_spectrum
from quax_faust.search.run_excess import CampaignConfig, rescaled_excess
from quax_faust.search.synthetic_campaign import Axion, CampaignPlan, synthetic_campaign

PLAN = CampaignPlan()
N_NOISE_CAMPAIGNS = 120
N_INJECTION_CAMPAIGNS = 12  # two axions each, far apart


# --- the expected signal --------------------------------------------------------------------------

def test_couplings_and_signal_power_match_the_published_numbers():
    """haloscope.md section 1: KSVZ at 9.0/10.4/11 GHz, DFSZ/KSVZ, TASEH's 1.4e-24 W, case A."""
    assert axion.ksvz_coupling_gev([9.0e9, 10.4e9, 11e9]) == pytest.approx([1.38e-14, 1.59e-14, 1.69e-14], rel=0.01)
    assert axion.dfsz_coupling_gev(10.4e9) / axion.ksvz_coupling_gev(10.4e9) == pytest.approx(0.371, rel=1e-3)
    assert axion.axion_mass_ev(10.4e9) == pytest.approx(43.0e-6, rel=1e-3)
    assert axion.rho_dm_j_m3() == pytest.approx(7.21e-5, rel=1e-3)
    taseh = axion.Cavity(4.75e9, 61_000 / 3, 2.0, 8.0, 0.234e-3, 0.62, 1.0)
    assert taseh.resonant_power_w(axion.ksvz_coupling_gev(4.75e9), 4.75e9) == pytest.approx(1.4e-24, rel=0.03)
    case_a = axion.Cavity(10.4e9, 4e4, 1.0, 8.1, 0.05e-3, 0.6, 1.0)
    assert case_a.resonant_power_w(axion.ksvz_coupling_gev(10.4e9), 10.4e9) == pytest.approx(9.7e-25, rel=0.01)
    # Half a linewidth off resonance the Lorentzian is 1/2; the power scales as g**2.
    detuned = case_a.cavity_frequency_hz + case_a.cavity_frequency_hz / case_a.loaded_q / 2
    assert case_a.lorentzian(detuned) == pytest.approx(0.5)
    assert axion.signal_power_w(2e-14, detuned, case_a) == pytest.approx(
        4 * axion.signal_power_w(1e-14, detuned, case_a))


def test_the_halo_line_has_the_standard_width_and_bins():
    """f beta**2 = 8.4 kHz at 10.4 GHz, mean offset 4.2 kHz, matched-filter bandwidth 8.8 kHz,
    95 % within 11 kHz; the binned shape sums to the share inside its bins."""
    f = 10.4e9
    assert axion.halo_width_hz(f) == pytest.approx(8.4e3, rel=0.01)
    def integral(function):
        return integrate.quad(lambda x: function(x) * axion.halo_line_density(x, f), 0, 2e5, points=[1e3, 1e4])[0]
    assert integral(lambda x: 1.0) == pytest.approx(1.0, abs=1e-6)
    assert integral(lambda x: x) == pytest.approx(4.2e3, rel=0.01)
    assert 1 / integral(lambda x: axion.halo_line_density(x, f)) == pytest.approx(
        axion.matched_filter_bandwidth_hz(f), rel=1e-6)
    assert axion.matched_filter_bandwidth_hz(f) == pytest.approx(8.8e3, rel=0.01)
    assert axion.halo_line_cdf(11e3, f) == pytest.approx(0.95, abs=0.01)
    shape = axion.binned_line_shape(f, 651.04, 16)
    assert shape.sum() == pytest.approx(np.mean([axion.halo_line_cdf((16 - u) * 651.04, f)
                                                 for u in (np.arange(64) + 0.5) / 64]))
    assert axion.binned_line_shape(f, 651.04, 60, position_in_bin=0.3).sum() == pytest.approx(1.0, abs=1e-5)


def test_the_windowed_line_shape_is_the_slice_periodograms_expectation():
    """A slice periodogram (boxcar, L samples) sees a density through the Fejer kernel: the
    windowed shape equals the line's density integrated against it (adaptive quadrature between
    the kernel's zeros) to 1e-9, its position average is the average over positions, it sums to
    the whole line over the L bins and leaks into the bins below the one holding f."""
    f, fs, slice_len = 10.4e9, 2e6, 3072
    b = fs / slice_len

    def fejer(d):
        s = np.sin(np.pi * d / fs)
        return np.sin(np.pi * d * slice_len / fs) ** 2 / (fs * slice_len * s ** 2) if abs(s) > 1e-12 else slice_len / fs

    position = 0.3
    shape = axion.windowed_line_shape(f, b, slice_len, 40, first_bin=-10, position_in_bin=position)
    for q, share in zip(range(-10, 30), shape):
        centre = (q + 0.5 - position) * b  # bin q's centre above f
        zeros = centre + b * np.arange(-q - 1, 200)
        edges = np.concatenate(([0.0], np.sort(np.append(zeros[(zeros > 0) & (zeros < 1.3e5)], centre)), [1.3e5]))
        exact = b * sum(integrate.quad(lambda x: axion.halo_line_density(x, f) * fejer(centre - x), lo, hi,
                                       epsabs=1e-13, epsrel=1e-10)[0] for lo, hi in zip(edges[:-1], edges[1:]) if hi > lo)
        assert share == pytest.approx(exact, abs=1e-9), q
    nodes, weights = np.polynomial.legendre.leggauss(24)
    positions = [axion.windowed_line_shape(f, b, slice_len, 40, first_bin=-10, position_in_bin=(1 + u) / 2) for u in nodes]
    averaged = axion.windowed_line_shape(f, b, slice_len, 40, first_bin=-10)
    np.testing.assert_allclose(averaged, np.tensordot(weights / 2, positions, axes=1), atol=1e-12)
    whole = axion.windowed_line_shape(f, b, slice_len, slice_len, first_bin=-slice_len // 2)
    assert whole.sum() == pytest.approx(1.0, abs=1e-12)
    assert whole.min() > 0
    # Against rectangular bins: 1.3 % below the bin holding f, 91.5 % (not 93.3 %) in the filter's 16.
    assert whole[:slice_len // 2].sum() == pytest.approx(0.013, abs=0.001)
    assert averaged[10:26].sum() == pytest.approx(0.915, abs=0.001)
    assert axion.binned_line_shape(f, b, 16).sum() == pytest.approx(0.933, abs=0.001)


# --- pure noise -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def noise_campaigns():
    return [grand_spectrum(synthetic_campaign(PLAN, seed=seed)) for seed in range(N_NOISE_CAMPAIGNS)]


def test_pure_noise_grand_spectrum_is_standard_normal(noise_campaigns):
    """Mean 0, variance 1, and the count beyond 2.5 sigma as for N(0, 1): the baseline fits'
    efficiency and noise narrowing are computed, not measured, so this tests them."""
    x = np.concatenate([g.significance[g.covered] for g in noise_campaigns])
    assert x.size > 300_000
    assert abs(x.mean()) < 0.04
    assert x.var() == pytest.approx(1.0, abs=0.05)
    g = noise_campaigns[0]
    assert 0.8 < np.nanmedian(g.efficiency) < 0.9 and 0.9 < np.nanmedian(g.noise_width) < 0.95
    assert all(0.9 < use.noise_ratio < 1.1 for use in g.runs)
    # Bins above 2.5 sigma come in excursions of several bins (neighbours correlate at ~0.95):
    # the count's variance is its mean times the mean excursion length.
    threshold = 2.5
    expected = x.size * special.ndtr(-threshold)
    excursion_bins = g.covered.sum() * special.ndtr(-threshold) / rescan.expected_false_candidates(g, threshold)
    assert 2 < excursion_bins < 12
    assert np.count_nonzero(x > threshold) == pytest.approx(expected, abs=4 * np.sqrt(expected * excursion_bins))
    assert np.count_nonzero(x < -threshold) == pytest.approx(expected, abs=4 * np.sqrt(expected * excursion_bins))


def test_neighbour_correlation_is_the_computed_one(noise_campaigns):
    x = np.array([g.significance for g in noise_campaigns])
    g = noise_campaigns[0]
    pairs = np.flatnonzero(g.covered[:-1] & g.covered[1:])
    measured = np.mean(x[:, pairs] * x[:, pairs + 1]) / np.mean(x[:, pairs] ** 2)
    assert measured == pytest.approx(np.nanmedian(g.neighbour_correlation), abs=0.01)


def test_upcrossing_probability_is_the_bivariate_normal_one():
    for rho in (0.0, 0.5, 0.95):
        both = stats.multivariate_normal([0, 0], [[1, rho], [rho, 1]]).cdf([-3.355, -3.355])
        assert rescan.upcrossing_probability(3.355, rho) == pytest.approx(special.ndtr(-3.355) - both, rel=1e-3)


def test_false_candidates_come_at_the_designed_rate(noise_campaigns):
    """The threshold for a 95 % chance to see a 5-sigma axion is 3.355 sigma; the number of
    false candidates over the band is Poisson with the computed look-elsewhere mean."""
    theta = rescan.threshold_for_goal(5.0, 0.95)
    assert theta == pytest.approx(3.355, abs=1e-3)
    for threshold in (3.0, theta):
        expected = sum(rescan.expected_false_candidates(g, threshold) for g in noise_campaigns)
        found = sum(len(rescan.rescan_list(g, threshold)) for g in noise_campaigns)
        assert expected > 50
        assert found == pytest.approx(expected, abs=3.5 * np.sqrt(expected)), (threshold, found, expected)
    g = noise_campaigns[0]
    lam = rescan.expected_false_candidates(g, theta)
    assert 0.2 < lam < 1.5  # a few tenths of a candidate to rescan per 2 MHz campaign
    assert rescan.threshold_for_false_candidates(g, lam) == pytest.approx(theta, abs=1e-6)
    assert rescan.global_significance(g, theta) == pytest.approx(-special.ndtri(-np.expm1(-lam)))


def test_exclusion_follows_the_radiometer_equation(noise_campaigns):
    """The 90 % CL limit of a measured 0 (the power-constrained floor) is the radiometer
    equation's within 10 % wherever each run holds the line whole; on pure noise the limit is
    never below it and its median is within 10 %."""
    g = noise_campaigns[0]
    curve = exclusion.exclusion_curve(g)
    covered = g.covered
    assert np.all(curve.g_limit_gev[covered] >= curve.g_sensitivity_gev[covered] * (1 - 1e-12))
    whole = covered.copy()
    for use in g.runs:  # a line cut by a run's DC gap or band edge loses part of that run
        used = np.zeros(covered.size + g.config.line_bins, bool)
        lo = use.grid_start - g.first_grid_index
        span = slice(max(lo, 0), lo + use.response.used.size)
        used[span] = use.response.used[max(-lo, 0):max(-lo, 0) + used[span].size]
        in_line = np.lib.stride_tricks.sliding_window_view(used, g.config.line_bins)[:covered.size]
        whole &= in_line.all(axis=1) | ~in_line.any(axis=1)
    assert whole.sum() > 0.7 * covered.sum()
    ratio = curve.g_sensitivity_gev[whole] / curve.g_radiometer_gev[whole]
    assert np.all(np.abs(ratio - 1) < 0.10), (ratio.min(), ratio.max())
    assert np.nanmedian(curve.g_limit_gev[covered] / curve.g_radiometer_gev[covered]) == pytest.approx(1.0, abs=0.1)
    # A one-hour QUAX-like campaign sits tens of times above KSVZ, DFSZ 2.7 times further.
    best = np.nanmin(curve.limit_over_ksvz)
    assert 1 < best < 100
    assert np.allclose(curve.dfsz_gev / curve.ksvz_gev, 0.36 / 0.97)


def test_power_constrained_limit():
    z = special.ndtri(0.9)
    assert exclusion.upper_limit_g2(np.array([2.0, 0.0, -3.0]), 1.0) == pytest.approx([2 + z, z, z])
    assert exclusion.upper_limit_g2(-3.0, 1.0, power_floor_sigma=-1.0) == pytest.approx(z - 1)


# --- an injected axion ----------------------------------------------------------------------------

def test_an_injected_axion_is_found_where_and_as_strong_as_predicted():
    """Axions injected at the coupling that the analysis expects at 5 sigma: their significance
    averages 5 within 10 %, (g/g_KSVZ)**2 is recovered, they are on the rescan list at the right
    frequency (most of them: 95 % are expected above 3.355 sigma), and excluded no more often
    than a 90 % CL limit allows."""
    reference = grand_spectrum(synthetic_campaign(PLAN, seed=0))
    rng = np.random.default_rng(7)
    middle = np.flatnonzero(reference.n_runs == PLAN.n_runs)
    recovered, estimates, listed, excluded = [], [], 0, 0
    for seed in range(N_INJECTION_CAMPAIGNS):
        picks = [middle[rng.integers(0, middle.size // 2 - 200)], middle[rng.integers(middle.size // 2, middle.size - 200)]]
        axions = [Axion(reference.frequency_hz[k] + (rng.random() - 0.5) * reference.bin_width_hz,
                        5.0 * reference.sigma[k]) for k in picks]
        g = grand_spectrum(synthetic_campaign(PLAN, axions, seed=1000 + seed))
        entries = rescan.rescan_list(g)
        curve = exclusion.exclusion_curve(g)
        for injected in axions:
            k = int(np.argmin(np.abs(g.frequency_hz - injected.frequency_hz)))
            recovered.append(g.significance[k] / (injected.g2 / g.sigma[k]))
            estimates.append(g.g2[k] / injected.g2)
            near = [e for e in entries if abs(e.frequency_hz - injected.frequency_hz) <= g.config.line_bins / 2 * g.bin_width_hz]
            listed += bool(near)
            excluded += curve.g_limit_gev[k] < np.sqrt(injected.g2) * curve.ksvz_gev[k]
            if near:
                assert near[0].runs[0].weight > 0.2
                assert abs(near[0].rescan_cavity_frequency_hz - injected.frequency_hz) < 10e3
    n = 2 * N_INJECTION_CAMPAIGNS
    print(f"recovered/predicted {np.mean(recovered):.3f}, g2 {np.mean(estimates):.3f}, listed {listed}/{n}, "
          f"excluded {excluded}/{n}")
    assert np.mean(recovered) == pytest.approx(1.0, abs=0.10), recovered
    assert np.mean(estimates) == pytest.approx(1.0, abs=0.10)
    assert listed >= n - 4, f"{listed} of {n} on the rescan list"
    # A 90 % CL limit excludes the true coupling in 10 % of experiments, no more.
    assert excluded <= stats.binom.ppf(0.99, n, 0.10), f"{excluded} of {n} injected couplings excluded at 90 % CL"


def test_a_signal_outside_every_run_is_never_reported():
    """Strong axions beyond the last run's spectrum, and in its anti-alias roll-off (in its
    spectrum, outside the used band): no candidate, no limit there."""
    reference = grand_spectrum(synthetic_campaign(PLAN, seed=0))
    strong = 20.0 * np.nanmin(reference.sigma)
    last_lo = PLAN.lo_frequencies_hz()[-1]
    for frequency in (last_lo + 3e6, last_lo + 0.8e6):
        g = grand_spectrum(synthetic_campaign(PLAN, [Axion(frequency, strong)], seed=3))
        assert frequency > g.frequency_hz[g.covered].max() + g.config.line_bins * g.bin_width_hz
        assert all(abs(e.frequency_hz - frequency) > 2e5 for e in rescan.rescan_list(g))
        assert np.nanmax(g.significance) < 4.5  # nothing leaks into the covered band either
    inside = grand_spectrum(synthetic_campaign(PLAN, [Axion(last_lo + 1e3, strong)], seed=3))
    assert rescan.rescan_list(inside)[0].significance > 10  # the same strength inside is seen


def test_a_run_claiming_more_slices_than_it_holds_shows_in_its_noise_ratio():
    """The measured scatter is checked against 1/sqrt(N): an N four times too large reads 2."""
    runs = synthetic_campaign(PLAN, seed=5)
    runs[2] = replace(runs[2], n_slices=4 * runs[2].n_slices)
    ratios = {use.run: use.noise_ratio for use in grand_spectrum(runs).runs}
    assert ratios["run002"] == pytest.approx(2.0, rel=0.05)
    assert ratios["run001"] == pytest.approx(1.0, rel=0.05)


# --- metadata ------------------------------------------------------------------------------------

def _with_metadata(runs, index, **fields):
    metadata = {k: v for k, v in runs[index].metadata.items() if k not in fields}
    metadata.update({k: v for k, v in fields.items() if v is not None})
    return runs[:index] + [replace(runs[index], metadata=metadata)] + runs[index + 1:]


def test_runs_lacking_metadata_are_left_out_with_the_reason():
    runs = synthetic_campaign(PLAN, seed=4)
    runs = _with_metadata(runs, 3, loaded_q=None, t_sys_k=None)
    runs = _with_metadata(runs, 5, lo_frequency_hz=runs[5].metadata["lo_frequency_hz"] + 0.3 * PLAN.bin_width_hz)
    runs = _with_metadata(runs, 7, form_factor="about a half")
    g = grand_spectrum(runs)
    reasons = {left.run: str(left) for left in g.left_out}
    assert set(reasons) == {"run003", "run005", "run007"}
    assert "run run003: left out of the campaign analysis: its metadata lacks loaded_q, t_sys_k" in reasons["run003"]
    assert "0.300 bin off the campaign's RF grid" in reasons["run005"]
    assert "form_factor" in reasons["run007"]
    assert [u.run for u in g.runs] == [f"run{i:03d}" for i in range(PLAN.n_runs) if i not in (3, 5, 7)]
    with pytest.raises(ValueError, match="run003: its metadata lacks loaded_q"):
        rescaled_excess(runs[3], CampaignConfig())
    nothing = grand_spectrum(runs[3:4])
    assert nothing.frequency_hz.size == 0 and len(nothing.left_out) == 1


def test_corrected_metadata_changes_the_result():
    """A run recorded with twice its real T_sys looks half as sensitive: the grand spectrum there
    is less precise and overestimates an axion's coupling from that run; corrected, it is the
    result of the right metadata exactly. A run added once its metadata is complete tightens it."""
    cavity_hz = PLAN.lo_frequencies_hz()[5] + PLAN.cavity_offset_hz
    reference = grand_spectrum(synthetic_campaign(PLAN, seed=0))
    k = int(np.argmin(np.abs(reference.frequency_hz - cavity_hz)))
    injected = Axion(reference.frequency_hz[k], 8 * reference.sigma[k])
    right = synthetic_campaign(PLAN, [injected], seed=11)
    wrong = _with_metadata(right, 5, t_sys_k=2 * PLAN.cavity.t_sys_k)
    missing = _with_metadata(right, 5, loaded_q=None)
    g_right, g_wrong, g_missing = grand_spectrum(right), grand_spectrum(wrong), grand_spectrum(missing)
    assert g_wrong.sigma[k] > 1.2 * g_right.sigma[k]
    assert g_missing.sigma[k] > g_wrong.sigma[k]
    assert g_missing.n_runs[k] == g_right.n_runs[k] - 1
    corrected = grand_spectrum(_with_metadata(wrong, 5, t_sys_k=PLAN.cavity.t_sys_k))
    np.testing.assert_array_equal(corrected.significance, g_right.significance)
    # Run 5's own estimate of the coupling doubles with the doubled T_sys.
    own_right, _ = rescaled_excess(right[5], CampaignConfig())
    own_wrong, _ = rescaled_excess(wrong[5], CampaignConfig())
    assert np.nanmedian(own_wrong / own_right) == pytest.approx(2.0)
