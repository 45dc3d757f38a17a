"""The live campaign's JSON document (``GET /campaign/``): what the dashboard's campaign page draws.

Built from a search.campaign_result.Campaign; NaN and infinities are null. Frequencies in Hz,
couplings g2 as (g/g_KSVZ)**2 at that frequency, limits in GeV**-1. The grid arrays are per grid
bin (``grid.frequency_hz``): a candidate axion whose rest frequency lies in that bin; null where
its line is not whole inside some run's used bins.

    {"version": n (the analyses so far), "updated_at_s": Unix s, "analysis_s": s,
     "status": "ok" | "no usable run" | "no runs yet",
     "runs_pattern": the campaign's runs (settings.campaign_runs; "" for all),
     "other_runs": runs seen on the topics that are not the campaign's,
     "files_folded", "duplicate_files", "rejected": {"spectra/reason": n, ...},
     "next_offsets": {"spectra": o, "metadata": o},
     "threshold_sigma", "goal": {...}, "expected_false_candidates", "band": {...},
     "best_limit": {...}, "bin_width_hz",
     "runs_used": [{run, lo_frequency_hz, cavity_frequency_hz, loaded_q, n_slices, n_files,
                    live_time_s, noise_ratio}, ...],
     "runs_left_out": [{run, reason, n_slices, n_files}, ...],
     "candidates": [{frequency_hz, significance, global_significance, g2, sigma, coupling_gev,
                     rescan_cavity_frequency_hz, rescan_lo_frequency_hz,
                     runs: [{run, lo_frequency_hz, cavity_frequency_hz, weight}]}, ...],
     "grid": {frequency_hz, significance, g2, sigma, n_runs,
              g_limit_gev, g_sensitivity_gev, ksvz_gev, dfsz_gev}}
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from quax_faust.campaign.state import CampaignState
from quax_faust.search.axion import ksvz_coupling_gev
from quax_faust.search.campaign_result import Campaign, band, best_limit


def floats(values) -> list[float | None]:
    """A JSON-safe list: NaN and infinities become null."""
    return [v if math.isfinite(v) else None for v in np.asarray(values, dtype=float).tolist()]


def _number(value: float) -> float | None:
    return value if math.isfinite(value) else None


def campaign_document(c: Campaign, state: CampaignState, *, version: int, updated_at_s: float,
                      analysis_s: float) -> dict[str, Any]:
    """The document of one analysis (module docstring) and the state it was made from."""
    g, curve = c.grand, c.curve
    status = "ok" if g.runs else ("no usable run" if g.left_out else "no runs yet")
    return {
        "version": version, "updated_at_s": updated_at_s, "analysis_s": analysis_s, "status": status,
        "runs_pattern": state.runs_pattern, "other_runs": len(state.other_runs),
        "files_folded": state.files_folded, "duplicate_files": state.duplicate_files,
        "rejected": {f"{role}/{reason}": n for (role, reason), n in sorted(state.rejected.items())},
        "next_offsets": dict(state.next_offsets),
        "threshold_sigma": c.threshold_sigma, "goal": dataclasses.asdict(state.goal),
        "expected_false_candidates": _number(c.expected_false_candidates),
        "band": {k: _number(v) for k, v in band(g).items()},
        "best_limit": {k: _number(v) for k, v in best_limit(c).items()} if g.runs else {},
        "bin_width_hz": _number(g.bin_width_hz),
        "runs_used": [{"run": u.run, "lo_frequency_hz": u.lo_frequency_hz,
                       "cavity_frequency_hz": u.cavity.cavity_frequency_hz, "loaded_q": u.cavity.loaded_q,
                       "n_slices": u.n_slices, "n_files": state.runs[u.run].n_files if u.run in state.runs else None,
                       "live_time_s": u.live_time_s, "noise_ratio": _number(u.noise_ratio)} for u in g.runs],
        "runs_left_out": [{"run": left.run, "reason": left.reason,
                           "n_slices": state.runs[left.run].n_slices if left.run in state.runs else None,
                           "n_files": state.runs[left.run].n_files if left.run in state.runs else None}
                          for left in g.left_out],
        "candidates": [{"frequency_hz": e.frequency_hz, "significance": e.significance,
                        "global_significance": _number(e.global_significance), "g2": e.g2, "sigma": e.sigma,
                        "coupling_gev": math.sqrt(max(e.g2, 0.0)) * float(ksvz_coupling_gev(e.frequency_hz)),
                        "rescan_cavity_frequency_hz": e.rescan_cavity_frequency_hz,
                        "rescan_lo_frequency_hz": e.rescan_lo_frequency_hz,
                        "runs": [dataclasses.asdict(s) for s in e.runs]} for e in c.entries],
        "grid": {"frequency_hz": floats(g.frequency_hz), "significance": floats(g.significance),
                 "g2": floats(g.g2), "sigma": floats(g.sigma), "n_runs": [int(n) for n in g.n_runs],
                 "g_limit_gev": floats(curve.g_limit_gev), "g_sensitivity_gev": floats(curve.g_sensitivity_gev),
                 "ksvz_gev": floats(curve.ksvz_gev), "dfsz_gev": floats(curve.dfsz_gev)},
    }
