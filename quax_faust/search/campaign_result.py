"""A campaign's analysis as one result: grand spectrum, rescan list, exclusion curve, and its tables.

Pure numpy/scipy (docs/analysis.md, "The campaign analysis"): ``analyse`` runs the physics of
grand.py, rescan.py and exclusion.py on runs read from anywhere (live tables, exports, the live
campaign consumer, Spark); ``tables`` lays the result out as the campaign file's columns with
their units (exports/campaign.py stores them); ``summary`` is what a physicist reads first.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from quax_faust.search import exclusion, rescan
from quax_faust.search.axion import ksvz_coupling_gev
from quax_faust.search.grand import GrandSpectrum, grand_spectrum
from quax_faust.search.run_excess import CampaignConfig, RunSpectrum

LIVE = "live tables"
G2_UNIT = "(g/g_KSVZ)**2"
SHOWN_RUNS = 20
"""Runs named in the summary's list of those used (the file lists them all)."""


@dataclasses.dataclass(frozen=True)
class Campaign:
    """The analysis of the runs read: grand spectrum, rescan list, exclusion curve, and the goal."""

    grand: GrandSpectrum
    entries: list[rescan.RescanEntry]
    curve: exclusion.ExclusionCurve
    threshold_sigma: float
    expected_false_candidates: float
    sources: dict[str, str]
    """run -> where it was read (an export's path, or LIVE)."""


def analyse(read: Sequence[tuple[RunSpectrum, str]], config: CampaignConfig, threshold_sigma: float,
            confidence: float = exclusion.CONFIDENCE, power_floor_sigma: float = 0.0) -> Campaign:
    """The campaign analysis of the runs; RuntimeError if none can enter it (each one's reason)."""
    grand = grand_spectrum([spectrum for spectrum, _ in read], config)
    if not grand.runs:
        raise RuntimeError("no usable run: every run was left out of the campaign analysis:\n  "
                           + "\n  ".join(str(left) for left in grand.left_out))
    return Campaign(grand, rescan.rescan_list(grand, threshold_sigma),
                    exclusion.exclusion_curve(grand, confidence, power_floor_sigma), threshold_sigma,
                    rescan.expected_false_candidates(grand, threshold_sigma),
                    {spectrum.run: source for spectrum, source in read})


def tables(c: Campaign) -> dict[str, dict[str, tuple[np.ndarray, str]]]:
    """The campaign file's tables (exports/campaign.py): column -> (values, unit)."""
    g, curve = c.grand, c.curve
    runs = g.runs
    used_bins = [np.flatnonzero(use.response.used) for use in runs]
    n_bins = [use.response.used.size for use in runs]
    candidate_runs = [(row, setting) for row, entry in enumerate(c.entries) for setting in entry.runs]
    entry_frequency = np.array([e.frequency_hz for e in c.entries])
    entry_g2 = np.array([e.g2 for e in c.entries])
    return {
        "grand": {
            "frequency_hz": (g.frequency_hz, "Hz"), "g2": (g.g2, G2_UNIT), "sigma": (g.sigma, G2_UNIT),
            "significance": (g.significance, "sigma"), "efficiency": (g.efficiency, "1"),
            "noise_width": (g.noise_width, "1"), "neighbour_correlation": (g.neighbour_correlation, "1"),
            "n_runs": (g.n_runs, "1"), "combined_g2": (g.combined_g2, G2_UNIT),
            "combined_sigma": (g.combined_sigma, G2_UNIT)},
        "candidates": {
            "frequency_hz": (entry_frequency, "Hz"), "significance": (np.array([e.significance for e in c.entries]), "sigma"),
            "global_significance": (np.array([e.global_significance for e in c.entries]), "sigma"),
            "g2": (entry_g2, G2_UNIT), "sigma": (np.array([e.sigma for e in c.entries]), G2_UNIT),
            "coupling_gev": (np.sqrt(np.maximum(entry_g2, 0.0)) * ksvz_coupling_gev(entry_frequency), "GeV**-1"),
            "n_runs": (np.array([len(e.runs) for e in c.entries], dtype=np.int64), "1"),
            "rescan_cavity_frequency_hz": (np.array([e.rescan_cavity_frequency_hz for e in c.entries]), "Hz"),
            "rescan_lo_frequency_hz": (np.array([e.rescan_lo_frequency_hz for e in c.entries]), "Hz")},
        "candidate_runs": {
            "candidate": (np.array([row for row, _ in candidate_runs], dtype=np.int64), "row of candidates"),
            "run": (np.array([s.run for _, s in candidate_runs], dtype=str), ""),
            "lo_frequency_hz": (np.array([s.lo_frequency_hz for _, s in candidate_runs]), "Hz"),
            "cavity_frequency_hz": (np.array([s.cavity_frequency_hz for _, s in candidate_runs]), "Hz"),
            "weight": (np.array([s.weight for _, s in candidate_runs]), "share of the inverse variance")},
        "exclusion": {
            "frequency_hz": (curve.frequency_hz, "Hz"), "g_limit_gev": (curve.g_limit_gev, "GeV**-1"),
            "g_sensitivity_gev": (curve.g_sensitivity_gev, "GeV**-1"),
            "g_radiometer_gev": (curve.g_radiometer_gev, "GeV**-1"), "ksvz_gev": (curve.ksvz_gev, "GeV**-1"),
            "dfsz_gev": (curve.dfsz_gev, "GeV**-1"), "limit_over_ksvz": (curve.limit_over_ksvz, "1")},
        "runs_used": {
            "run": (np.array([u.run for u in runs], dtype=str), ""),
            "source": (np.array([c.sources.get(u.run, "") for u in runs], dtype=str), ""),
            "lo_frequency_hz": (np.array([u.lo_frequency_hz for u in runs]), "Hz"),
            **{name: (np.array([getattr(u.cavity, name) for u in runs]), unit) for name, unit in (
                ("cavity_frequency_hz", "Hz"), ("loaded_q", "1"), ("coupling_beta", "1"), ("b_field_t", "T"),
                ("volume_m3", "m**3"), ("form_factor", "1"), ("t_sys_k", "K"))},
            "n_slices": (np.array([u.n_slices for u in runs], dtype=np.int64), "1"),
            "live_time_s": (np.array([u.live_time_s for u in runs]), "s"),
            "used_low_hz": (np.array([u.lo_frequency_hz + (b[0] - n // 2) * g.bin_width_hz
                                      for u, b, n in zip(runs, used_bins, n_bins)]), "Hz"),
            "used_high_hz": (np.array([u.lo_frequency_hz + (b[-1] - n // 2) * g.bin_width_hz
                                       for u, b, n in zip(runs, used_bins, n_bins)]), "Hz"),
            "noise_ratio": (np.array([u.noise_ratio for u in runs]), "measured sigma / (1/sqrt(N))")},
        "runs_left_out": {
            "run": (np.array([left.run for left in g.left_out], dtype=str), ""),
            "source": (np.array([c.sources.get(left.run, "") for left in g.left_out], dtype=str), ""),
            "reason": (np.array([left.reason for left in g.left_out], dtype=str), "")},
    }


def band(g: GrandSpectrum) -> dict[str, float]:
    """The candidate frequencies with a result: lowest and highest (Hz), and their total width."""
    covered = g.frequency_hz[g.covered]
    if not covered.size:
        return {"covered_low_hz": float("nan"), "covered_high_hz": float("nan"), "covered_hz": 0.0}
    return {"covered_low_hz": float(covered[0]), "covered_high_hz": float(covered[-1]),
            "covered_hz": float(covered.size * g.bin_width_hz)}


def best_limit(c: Campaign) -> dict[str, float]:
    """The lowest limit over the band, where it is, and how much of the band excludes KSVZ/DFSZ."""
    covered = c.grand.covered
    if not covered.any():
        return {}
    curve = c.curve
    k = int(np.nanargmin(np.where(covered, curve.limit_over_ksvz, np.nan)))
    width = c.grand.bin_width_hz
    return {"frequency_hz": float(curve.frequency_hz[k]), "g_limit_gev": float(curve.g_limit_gev[k]),
            "limit_over_ksvz": float(curve.limit_over_ksvz[k]),
            "ksvz_excluded_hz": float(np.count_nonzero(covered & (curve.g_limit_gev <= curve.ksvz_gev)) * width),
            "dfsz_excluded_hz": float(np.count_nonzero(covered & (curve.g_limit_gev <= curve.dfsz_gev)) * width)}


def summary(c: Campaign, goal: dict[str, float]) -> str:
    """What a physicist reads first: runs used and left out, band, threshold, candidates, best limit."""
    g = c.grand
    covered = band(g)
    lines = [f"campaign of {len(g.runs) + len(g.left_out)} runs: {len(g.runs)} used, {len(g.left_out)} left out"]
    names = [use.run for use in g.runs]
    lines.append(f"  used: {', '.join(names[:SHOWN_RUNS])}"
                 + (f" and {len(names) - SHOWN_RUNS} more (runs_used in the file)" if len(names) > SHOWN_RUNS else ""))
    lines += [f"  left out: {left.run} ({c.sources.get(left.run, '?')}): {left.reason}" for left in g.left_out]
    if g.covered.any():
        lines.append(f"band: {covered['covered_low_hz']:.1f} .. {covered['covered_high_hz']:.1f} Hz "
                     f"({covered['covered_hz'] / 1e6:.3f} MHz in {np.count_nonzero(g.covered)} bins of "
                     f"{g.bin_width_hz:.2f} Hz), up to {int(g.n_runs.max(initial=0))} runs per bin")
    else:
        lines.append(f"band: none: no candidate frequency has its whole line ({g.config.line_bins} bins) "
                     "in the used bins of the runs")
    goal_text = (f"an axion expected at {goal['target_significance']:g} sigma passes it "
                 f"{100 * goal['detection_probability']:g} % of the time" if "target_significance" in goal
                 else "given with --threshold")
    lines.append(f"threshold {c.threshold_sigma:.3f} sigma ({goal_text}); "
                 f"{c.expected_false_candidates:.2f} false candidates expected over the band")
    if c.entries:
        lines.append(f"candidates to rescan, strongest first ({len(c.entries)}):")
        lines.append(f"  {'frequency_hz':>16} {'sigma':>6} {'global':>6} {'g2':>8} +- {'sigma':<6}  "
                     f"{'cavity_hz':>16} {'lo_hz':>16}  runs")
        for e in c.entries:
            lines.append(f"  {e.frequency_hz:16.1f} {e.significance:6.2f} {e.global_significance:6.2f} "
                         f"{e.g2:8.3g} +- {e.sigma:<6.3g}  {e.rescan_cavity_frequency_hz:16.1f} "
                         f"{e.rescan_lo_frequency_hz:16.1f}  {', '.join(s.run for s in e.runs)}")
    else:
        lines.append("no candidates above the threshold")
    best = best_limit(c)
    if best:
        lines.append(f"best limit ({100 * c.curve.confidence:g} % CL): |g_agg| < {best['g_limit_gev']:.3g} GeV^-1 = "
                     f"{best['limit_over_ksvz']:.2f} x KSVZ at {best['frequency_hz']:.1f} Hz; KSVZ excluded over "
                     f"{best['ksvz_excluded_hz']:.0f} Hz, DFSZ over {best['dfsz_excluded_hz']:.0f} Hz")
    return "\n".join(lines)
