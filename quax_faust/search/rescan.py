"""Candidates of a grand spectrum: the threshold for a goal, the look-elsewhere count, the rescan list.

Pure numpy/scipy (docs/analysis.md, "The campaign analysis", step 7; shared/haloscope.md section 4).
HAYSTAC's procedure: a low threshold Theta that a target-significance axion passes with a stated
probability (5 sigma seen 95 % of the time: Theta = 5 - 1.645 = 3.355), every candidate above it
rescanned; noise rarely passes twice. The look-elsewhere effect over the band is the expected
number of false candidates, lambda: the filter makes neighbouring significances correlated
(rho ~ 0.95 for 16 bins), so a noise excursion spans several bins and counts once. For a
stationary Gaussian sequence the chance that candidate k starts an excursion above Theta is
exactly P(x_{k-1} <= Theta < x_k) = 2 T(Theta, sqrt((1 - rho)/(1 + rho))), T Owen's function;
lambda sums it over the band (an upper bound on the candidates once nearby excursions are merged).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import optimize, special

from quax_faust.search.axion import halo_width_hz
from quax_faust.search.grand import GrandSpectrum


def threshold_for_goal(target_significance: float = 5.0, detection_probability: float = 0.95) -> float:
    """Theta such that an axion expected at target_significance (sigma) passes it with the given
    probability: target - Phi^-1(probability) (5 sigma, 95 %: 3.355 sigma)."""
    return float(target_significance - special.ndtri(detection_probability))


def upcrossing_probability(threshold: float, correlation: np.ndarray | float) -> np.ndarray:
    """P(x_{k-1} <= Theta < x_k) for standard normal neighbours of correlation rho (Owen's T)."""
    rho = np.clip(np.asarray(correlation, dtype=np.float64), -1.0, 1.0)
    return 2.0 * special.owens_t(threshold, np.sqrt((1.0 - rho) / (1.0 + rho)))


def expected_false_candidates(grand: GrandSpectrum, threshold: float) -> float:
    """lambda: expected noise excursions above threshold over the covered band of the campaign
    (the first covered candidate of each stretch counts Phi(-Theta), the others the upcrossing)."""
    covered = grand.covered
    if not covered.any():
        return 0.0
    after = covered[1:] & covered[:-1]
    rho = np.nan_to_num(grand.neighbour_correlation[:-1][after], nan=0.0)
    stretches = int(covered[0]) + int(np.count_nonzero(covered[1:] & ~covered[:-1]))
    return float(stretches * special.ndtr(-threshold) + upcrossing_probability(threshold, rho).sum())


def global_significance(grand: GrandSpectrum, local_significance: float) -> float:
    """Gaussian-equivalent significance of the chance that noise somewhere in the band reaches
    local_significance: P = 1 - exp(-lambda(local)). Negative when that is more likely than not."""
    expected = expected_false_candidates(grand, local_significance)
    return float(-special.ndtri(-np.expm1(-expected))) if expected > 0 else float("inf")


def threshold_for_false_candidates(grand: GrandSpectrum, expected: float) -> float:
    """The threshold (sigma) at which lambda equals expected false candidates over the band."""
    return float(optimize.brentq(lambda t: expected_false_candidates(grand, t) - expected, 0.0, 12.0))


def candidate_indices(grand: GrandSpectrum, threshold: float) -> np.ndarray:
    """Grid indices of the candidates: covered bins above threshold, grouped when less than
    line_bins apart, each group reported at its maximum. (n_candidates,) int, ascending."""
    above = np.flatnonzero(np.nan_to_num(grand.significance, nan=-np.inf) > threshold)
    if above.size == 0:
        return above
    breaks = np.flatnonzero(np.diff(above) >= grand.config.line_bins) + 1
    return np.array([group[np.argmax(grand.significance[group])] for group in np.split(above, breaks)])


@dataclass(frozen=True)
class RunSetting:
    """A run covering a candidate: its LO and cavity, and its share of the candidate's weight."""

    run: str
    lo_frequency_hz: float
    cavity_frequency_hz: float
    weight: float
    """This run's share of the candidate's inverse variance (0..1)."""


@dataclass(frozen=True)
class RescanEntry:
    """One candidate to rescan."""

    frequency_hz: float
    """Centre of the grid bin holding the candidate axion's rest frequency, Hz."""
    significance: float
    global_significance: float
    g2: float
    """Estimated (g/g_KSVZ)**2 and its sigma."""
    sigma: float
    runs: tuple[RunSetting, ...]
    """Runs covering it, largest weight first (those with >= 1 % of the weight)."""
    rescan_cavity_frequency_hz: float
    """Cavity setting to revisit: on the line's mean frequency (f + f beta**2/2)."""
    rescan_lo_frequency_hz: float
    """LO that puts the candidate where the heaviest run had it, on the campaign's RF grid."""


def rescan_list(grand: GrandSpectrum, threshold: float | None = None) -> list[RescanEntry]:
    """Every candidate above threshold (default: threshold_for_goal()), strongest first."""
    threshold = threshold_for_goal() if threshold is None else threshold
    entries = []
    for k in candidate_indices(grand, threshold):
        index = grand.first_grid_index + int(k)
        weights = np.array([use.candidate_weight(index) for use in grand.runs])
        share = weights / weights.sum()
        order = [i for i in np.argsort(-share) if share[i] >= 0.01]
        settings = tuple(RunSetting(grand.runs[i].run, grand.runs[i].lo_frequency_hz,
                                    grand.runs[i].cavity.cavity_frequency_hz, float(share[i])) for i in order)
        frequency = float(grand.frequency_hz[k])
        cavity = frequency + halo_width_hz(frequency) / 2
        heaviest = grand.runs[order[0]]
        shift_bins = round((cavity - heaviest.cavity.cavity_frequency_hz) / grand.bin_width_hz)
        entries.append(RescanEntry(frequency, float(grand.significance[k]),
                                   global_significance(grand, float(grand.significance[k])),
                                   float(grand.g2[k]), float(grand.sigma[k]), settings, cavity,
                                   heaviest.lo_frequency_hz + shift_bins * grand.bin_width_hz))
    return sorted(entries, key=lambda entry: -entry.significance)
