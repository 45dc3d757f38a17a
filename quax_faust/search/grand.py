"""The grand spectrum of a campaign: runs combined on one RF grid, filtered with the axion line shape.

Pure numpy/scipy (docs/analysis.md, "The campaign analysis", steps 4-6). Every run's bins sit on
one RF grid (f = LO + baseband; the LOs must differ by whole bins). In grid bin m the runs'
estimates of (g/g_KSVZ)**2 combine with inverse-variance weights (maximum likelihood):

    y_m = sum_i N_i a_im delta_im,    1/sigma_c**2 = sum_i N_i a_im**2,    delta_c = y_m sigma_c**2

(a_im: run i's expected excess in bin m per unit (g/g_KSVZ)**2 of a whole line), then the
line-shape filter over K bins, candidate k holding the axion frequency in its first bin:

    num_k = sum_q Lq y_{k+q},   D_k = sum_q Lq**2 / sigma_c**2_{k+q}   (HAYSTAC: delta_g = num/D)

The baseline fit absorbs part of a line (efficiency eta_k) and narrows the noise (xi_k); both are
computed exactly per run (run_excess.run_response), so that

    g2_k = num_k / (eta_k D_k)   estimates (g/g_KSVZ)**2,   sigma_k = xi_k / (eta_k sqrt(D_k)),

and the significance x_k = g2_k / sigma_k is N(0, 1) for noise (no rescaling by a measured xi).
num and D are accumulated run by run with each run's own line shape (equal to combining first).

Two steps: ``prepare_run`` checks a run alone and holds its terms of the sums (``PreparedRun``:
response and ``RunContribution``, computed once); ``assemble`` places the runs on the grid, in
their order, and sums them. ``grand_spectrum`` does both; live_grand.LiveGrand keeps the prepared
runs of a live campaign and redoes only the one a new file changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np

from quax_faust.core.dsp import frequency_axis_hz
from quax_faust.search.axion import Cavity, ksvz_coupling_gev
from quax_faust.search.run_excess import (
    CampaignConfig,
    RunResponse,
    RunSpectrum,
    cavity_of,
    excess,
    noise_ratio,
    run_response,
)

GRID_TOLERANCE_BINS = 1e-3
"""How far (in bins) a run's bins may sit from the campaign's RF grid."""


@dataclass(frozen=True)
class RunUse:
    """A run that entered the grand spectrum."""

    run: str
    lo_frequency_hz: float
    cavity: Cavity
    n_slices: int
    live_time_s: float
    """N slices of 1/b seconds each, s."""
    grid_start: int
    """Grid index of the run's bin 0 (fftshifted: the lowest baseband frequency)."""
    noise_ratio: float
    """Measured scatter of the run's excess against 1/sqrt(N): 1 for honest noise (haloscope.md:
    check the measured sigma against 1/sqrt(N)); not used in the weights."""
    response: RunResponse = field(repr=False)

    def candidate_weight(self, grid_index: int) -> float:
        """This run's nominal inverse variance N sum_q (Lq a)**2 for the candidate at a grid index."""
        row = grid_index - (self.grid_start + self.response.first_line_bin)
        inside = 0 <= row < self.response.nominal.size
        return self.n_slices * float(self.response.nominal[row]) if inside else 0.0


@dataclass(frozen=True)
class LeftOut:
    """A run kept out of the physics, and why (the live spectra keep it)."""

    run: str
    reason: str

    def __str__(self) -> str:
        return f"run {self.run}: left out of the campaign analysis: {self.reason}"


@dataclass(frozen=True)
class GrandSpectrum:
    """Per grid bin m (frequency_hz[m]); candidate arrays are NaN where the K bins of the line
    starting at m are not all covered by some run. Couplings as (g/g_KSVZ)**2 at that frequency."""

    frequency_hz: np.ndarray
    """(n,) grid bin centres, Hz; for candidates: the bin holding the axion's rest frequency."""
    g2: np.ndarray
    """(n,) estimate of (g/g_KSVZ)**2 of an axion in the bin."""
    sigma: np.ndarray
    """(n,) its standard deviation (same unit)."""
    significance: np.ndarray
    """(n,) g2/sigma: N(0, 1) without an axion."""
    efficiency: np.ndarray
    """(n,) eta: share of the line's filtered excess the baselines leave."""
    noise_width: np.ndarray
    """(n,) xi: noise of the filtered sum with the baselines over that without."""
    neighbour_correlation: np.ndarray
    """(n,) correlation of candidate m with candidate m + 1."""
    n_runs: np.ndarray
    """(n,) int: runs with used bins under the line."""
    combined_g2: np.ndarray
    """(n,) the combined spectrum before the filter: (g/g_KSVZ)**2 of a whole line in bin m."""
    combined_sigma: np.ndarray
    bin_width_hz: float
    config: CampaignConfig
    runs: tuple[RunUse, ...]
    left_out: tuple[LeftOut, ...]
    first_grid_index: int = 0
    """Grid index of frequency_hz[0] (the grid's origin is the first kept run's bin 0)."""

    @property
    def covered(self) -> np.ndarray:
        """(n,) bool: candidates with a result."""
        return np.isfinite(self.significance)

    @property
    def expected_ksvz_significance(self) -> np.ndarray:
        """(n,) mu_KSVZ = 1/sigma: the significance a KSVZ axion would have on average."""
        return 1.0 / self.sigma

    @property
    def ksvz_coupling_gev(self) -> np.ndarray:
        """(n,) |g_KSVZ| at each frequency, GeV**-1: the unit of g2 is its square."""
        return ksvz_coupling_gev(self.frequency_hz)


@dataclass(frozen=True, eq=False)
class PreparedRun:
    """A run checked for the physics, before the grid: its RF layout, and (computed when first
    asked, then kept) its response and its contribution to the campaign's sums. Independent of
    the other runs, so a live campaign keeps one per run and redoes only the run that changed."""

    spectrum: RunSpectrum
    config: CampaignConfig
    lo_frequency_hz: float
    cavity: Cavity
    bin_width_hz: float
    lowest_hz: float
    """RF frequency of the run's bin 0 (fftshifted: the lowest baseband frequency), Hz."""

    @cached_property
    def response(self) -> RunResponse:
        s = self.spectrum
        return run_response(self.cavity, self.lo_frequency_hz, np.asarray(s.mean).size, s.sample_rate_hz, self.config)

    @cached_property
    def contribution(self) -> RunContribution:
        return run_contribution(self.spectrum, self.response, self.config)


@dataclass(frozen=True)
class RunContribution:
    """A run's terms of the grand spectrum's sums, each times N, on the run's own bins (index 0:
    its bin 0; the line rows from response.first_line_bin on)."""

    bin_sums: np.ndarray
    """(2, n_bins): N a delta (for y) and N a**2 (for 1/sigma_c**2), 0 on bins not used."""
    line_sums: np.ndarray
    """(5, n_rows): N sum_q Lq a delta (num), and N times the response's nominal, variance,
    signal and next_covariance."""
    line_runs: np.ndarray
    """(n_rows,) int64: 1 where the run holds part of the line (nominal > 0)."""
    used_first: int
    used_last: int
    """First and last used bin of the run."""
    noise_ratio: float


def prepare_run(spectrum: RunSpectrum, config: CampaignConfig) -> PreparedRun | LeftOut:
    """The run ready for the grid, or left out for what it holds alone (metadata, size, values)."""
    found = cavity_of(spectrum)
    n_bins = np.asarray(spectrum.mean).size
    if isinstance(found, str):
        return LeftOut(spectrum.run, found)
    if spectrum.n_slices < 1 or n_bins < config.baseline_window_bins:
        return LeftOut(spectrum.run, f"{spectrum.n_slices} slices of {n_bins} bins: nothing to "
                       f"analyse with a {config.baseline_window_bins}-bin baseline")
    if not np.all(np.isfinite(spectrum.mean)) or np.any(np.asarray(spectrum.mean) <= 0):
        return LeftOut(spectrum.run, "its average has non-finite or non-positive bins")
    lo, cavity = found
    return PreparedRun(spectrum, config, lo, cavity, spectrum.sample_rate_hz / n_bins,
                       lo + frequency_axis_hz(n_bins, spectrum.sample_rate_hz)[0])


def run_contribution(spectrum: RunSpectrum, response: RunResponse, config: CampaignConfig) -> RunContribution:
    """The run's ``RunContribution``: its excess weighted by N and by its response."""
    k, n_slices = config.line_bins, spectrum.n_slices
    delta = excess(spectrum, config)
    weighted = response.gain * np.where(response.used, delta, 0.0)
    padded = np.concatenate((np.zeros(k), weighted, np.zeros(k)))
    start = k + response.first_line_bin
    rows = response.nominal.size
    numerator = np.correlate(padded[start:start + rows + k - 1], response.line_shape, "valid")
    used_bins = np.flatnonzero(response.used)
    share = RunContribution(
        bin_sums=np.stack((n_slices * weighted, n_slices * response.gain ** 2)),
        line_sums=np.stack([n_slices * values for values in (numerator, response.nominal, response.variance,
                                                             response.signal, response.next_covariance)]),
        line_runs=(response.nominal > 0).astype(np.int64),
        used_first=int(used_bins[0]), used_last=int(used_bins[-1]),
        noise_ratio=noise_ratio(delta, response.used, n_slices, config))
    for array in (share.bin_sums, share.line_sums, share.line_runs):
        array.flags.writeable = False  # kept and summed again at every assembly
    return share


def place_runs(prepared: Sequence[PreparedRun | LeftOut]
               ) -> tuple[list[tuple[PreparedRun, RunUse]], list[LeftOut], float, float]:
    """The prepared runs on the RF grid, or left out with the reason; and the grid: (placed,
    left_out, frequency of grid index 0 in Hz, bin width in Hz). The first run kept sets the
    grid (its bin 0 is grid index 0); a run whose bins are not on it is left out."""
    placed: list[tuple[PreparedRun, RunUse]] = []
    left_out: list[LeftOut] = []
    origin_hz = bin_width_hz = float("nan")
    reference = None
    for run in prepared:
        if isinstance(run, LeftOut):
            left_out.append(run)
            continue
        name, width = run.spectrum.run, run.bin_width_hz
        if reference is None:
            origin_hz, bin_width_hz, reference = run.lowest_hz, width, name
        if abs(width / bin_width_hz - 1) > 1e-9:
            left_out.append(LeftOut(name, f"bins of {width:.6g} Hz, the campaign's are "
                                    f"{bin_width_hz:.6g} Hz (run {reference})"))
            continue
        position = (run.lowest_hz - origin_hz) / bin_width_hz
        if abs(position - round(position)) > GRID_TOLERANCE_BINS:
            left_out.append(LeftOut(name, f"its LO {run.lo_frequency_hz:.6f} Hz puts its bins "
                                    f"{abs(position - round(position)):.3f} bin off the campaign's RF grid "
                                    f"(set by run {reference}): step the LO by whole bins"))
            continue
        n_slices = run.spectrum.n_slices
        placed.append((run, RunUse(name, run.lo_frequency_hz, run.cavity, n_slices, n_slices / width,
                                   round(position), float("nan"), run.response)))
    return placed, left_out, origin_hz, bin_width_hz


def grand_spectrum(spectra: Sequence[RunSpectrum], config: CampaignConfig | None = None) -> GrandSpectrum:
    """The campaign's grand spectrum from its runs' averages and metadata (module docstring);
    config None: CampaignConfig()'s defaults."""
    config = CampaignConfig() if config is None else config
    return assemble([prepare_run(spectrum, config) for spectrum in spectra], config)


def assemble(prepared: Sequence[PreparedRun | LeftOut], config: CampaignConfig) -> GrandSpectrum:
    """The grand spectrum of prepared runs, in their order: placed on the grid, their
    contributions summed, the line-shape filter's results where a whole line is covered."""
    placed, left_out, origin_hz, bin_width_hz = place_runs(prepared)
    if not placed:
        empty = np.empty(0)
        return GrandSpectrum(empty, empty, empty, empty, empty, empty, empty, np.empty(0, int), empty, empty,
                             float("nan"), config, (), tuple(left_out))
    k = config.line_bins
    low = min(use.grid_start + run.contribution.used_first for run, use in placed)
    n = max(use.grid_start + run.contribution.used_last for run, use in placed) + 1 - low
    bin_sums, line_sums = np.zeros((2, n)), np.zeros((5, n))
    n_runs = np.zeros(n, dtype=np.int64)
    runs = []
    for run, use in placed:
        share = run.contribution
        row0 = use.grid_start + use.response.first_line_bin - low
        _add(bin_sums, use.grid_start - low, share.bin_sums)
        _add(line_sums, row0, share.line_sums)
        _add(n_runs, row0, share.line_runs)
        runs.append(replace(use, noise_ratio=share.noise_ratio))
    y, inverse_variance = bin_sums
    numerator, nominal, variance, signal, next_cov = line_sums

    covered_bins = inverse_variance > 0
    whole_line = np.convolve(covered_bins.astype(np.int64), np.ones(k, np.int64), "full")[k - 1:] == k
    with np.errstate(divide="ignore", invalid="ignore"):
        g2 = np.where(whole_line, numerator / signal, np.nan)
        sigma = np.where(whole_line, np.sqrt(variance) / signal, np.nan)
        correlation = next_cov / np.sqrt(variance * np.roll(variance, -1))
        correlation[-1] = np.nan
        combined_sigma = np.where(covered_bins, 1.0 / np.sqrt(inverse_variance), np.nan)
        return GrandSpectrum(
            frequency_hz=origin_hz + (low + np.arange(n)) * bin_width_hz,
            g2=g2, sigma=sigma, significance=g2 / sigma,
            efficiency=np.where(whole_line, signal / nominal, np.nan),
            noise_width=np.where(whole_line, np.sqrt(variance / nominal), np.nan),
            neighbour_correlation=np.where(whole_line & np.roll(whole_line, -1), correlation, np.nan),
            n_runs=n_runs, combined_g2=np.where(covered_bins, y / inverse_variance, np.nan),
            combined_sigma=combined_sigma,
            bin_width_hz=bin_width_hz, config=config,
            runs=tuple(runs), left_out=tuple(left_out), first_grid_index=int(low))


def _add(target: np.ndarray, start: int, values: np.ndarray) -> None:
    """target[..., start:start+n] += values (n its last axis), clipped to target's range."""
    lo, hi = max(start, 0), min(start + values.shape[-1], target.shape[-1])
    if hi > lo:
        target[..., lo:hi] += values[..., lo - start:hi - start]
