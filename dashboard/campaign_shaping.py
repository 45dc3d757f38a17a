"""Pure shaping for the campaign page: the live campaign's JSON document in, plot and table columns out.

The document is what ``quax campaign-live`` serves at ``/campaign/`` (its schema: the docstring of
quax_faust/campaign/document.py; not imported here, the dashboard parses the JSON). Frequencies in
Hz unless a name says MHz (the plots' axis: MHz above a whole-MHz reference, so the grid's 651 Hz
bins stay apart in a float); couplings g2 as (g/g_KSVZ)**2, limits in GeV**-1; null is NaN.
No HTTP, no Bokeh (tests/test_campaign_shaping.py).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

GRID_KEYS = ("frequency_hz", "significance", "g2", "sigma", "n_runs", "g_limit_gev", "g_sensitivity_gev",
             "ksvz_gev", "dfsz_gev")
DOCUMENT_KEYS = ("version", "updated_at_s", "status", "files_folded", "threshold_sigma", "runs_used",
                 "runs_left_out", "candidates", "grid")
CANDIDATE_COLUMNS = ("frequency_hz", "frequency_mhz", "significance", "global_significance", "g2", "sigma",
                     "g2_text", "coupling_gev", "rescan_cavity_frequency_hz", "rescan_lo_frequency_hz", "runs")
RUNS_USED_COLUMNS = ("run", "lo_frequency_hz", "cavity_frequency_hz", "loaded_q", "n_slices", "n_files",
                     "live_time_s", "noise_ratio")
RUNS_LEFT_OUT_COLUMNS = ("run", "reason", "n_slices", "n_files")


class BadDocument(ValueError):
    """The campaign service answered with something that is not a campaign document."""


def check_document(doc: Any, url: str = "the campaign document") -> Mapping[str, Any]:
    """``doc`` if it has every key the page draws and grid arrays of one length; BadDocument naming
    the URL and what is missing otherwise."""
    if not isinstance(doc, Mapping):
        raise BadDocument(f"{url}: expected a JSON object, got {type(doc).__name__}")
    missing = [k for k in DOCUMENT_KEYS if k not in doc]
    grid = doc.get("grid")
    if isinstance(grid, Mapping):
        missing += [f"grid/{k}" for k in GRID_KEYS if k not in grid]
    elif "grid" not in missing:
        missing.append("grid (not an object)")
    if missing:
        raise BadDocument(f"{url}: not a campaign document: missing {', '.join(missing)}")
    lengths = {k: len(grid[k]) for k in GRID_KEYS}
    if len(set(lengths.values())) > 1:
        raise BadDocument(f"{url}: grid arrays of different lengths: "
                          + ", ".join(f"{k} {n}" for k, n in lengths.items()))
    return doc


def document_key(doc: Mapping[str, Any]) -> tuple:
    """What changes with every analysis: (version, updated_at_s). The version alone restarts at 1
    when the service restarts; the time tells two analyses with the same number apart."""
    return doc.get("version"), doc.get("updated_at_s")


def number(value: float | None) -> float:
    """A JSON number (null for NaN or infinity) as a float, NaN for null."""
    return math.nan if value is None else float(value)


def numbers(values: Sequence[float | None]) -> np.ndarray:
    """A JSON list of numbers (null for NaN) as a float64 array."""
    return np.array([math.nan if v is None else v for v in values], dtype=np.float64)


# --- the frequency axis ---------------------------------------------------------------------------

def reference_frequency_hz(doc: Mapping[str, Any]) -> float:
    """The whole MHz just below the campaign grid's lowest frequency (0 for an empty grid): the
    plots show RF frequency minus this, in MHz."""
    freq = numbers(doc["grid"]["frequency_hz"])
    finite = freq[np.isfinite(freq)]
    return math.floor(finite.min() / 1e6) * 1e6 if finite.size else 0.0


def frequency_axis_label(reference_hz: float) -> str:
    """'RF frequency − 10,400 MHz (MHz)': the axis' offset and unit, named."""
    if reference_hz == 0:
        return "RF frequency (MHz)"
    return f"RF frequency − {reference_hz / 1e6:,.0f} MHz (MHz)"


def offset_mhz(frequency_hz: np.ndarray | Sequence[float], reference_hz: float) -> np.ndarray:
    """(frequency - reference) in MHz, float64."""
    return (np.asarray(frequency_hz, dtype=np.float64) - reference_hz) / 1e6


# --- plot and table columns ------------------------------------------------------------------------

def significance_columns(doc: Mapping[str, Any], reference_hz: float) -> dict[str, np.ndarray]:
    """The grand spectrum per grid bin: significance (sigma), g2 and its sigma, runs covering it.

    One row per grid bin (the document's grid, in order); NaN where no run holds the line whole.
    """
    grid = doc["grid"]
    freq = numbers(grid["frequency_hz"])
    return {"frequency_hz": freq, "frequency_mhz": offset_mhz(freq, reference_hz),
            "significance": numbers(grid["significance"]), "g2": numbers(grid["g2"]),
            "sigma": numbers(grid["sigma"]), "n_runs": np.asarray(grid["n_runs"], dtype=np.int64)}


def limit_columns(doc: Mapping[str, Any], reference_hz: float) -> dict[str, np.ndarray]:
    """The exclusion curve per grid bin, GeV**-1: limit, sensitivity, KSVZ and DFSZ (NaN: no limit)."""
    grid = doc["grid"]
    freq = numbers(grid["frequency_hz"])
    return {"frequency_hz": freq, "frequency_mhz": offset_mhz(freq, reference_hz),
            **{k: numbers(grid[k]) for k in ("g_limit_gev", "g_sensitivity_gev", "ksvz_gev", "dfsz_gev")}}


def candidate_columns(doc: Mapping[str, Any], reference_hz: float) -> dict[str, list]:
    """The rescan list, strongest first as served: where, how significant, g2 ± sigma, the setting
    to revisit, and the runs covering it with their share of the weight."""
    items = doc["candidates"]
    freq = [float(c["frequency_hz"]) for c in items]
    return {
        "frequency_hz": freq,
        "frequency_mhz": offset_mhz(freq, reference_hz).tolist(),
        "significance": [number(c["significance"]) for c in items],
        "global_significance": [number(c.get("global_significance")) for c in items],
        "g2": [number(c["g2"]) for c in items],
        "sigma": [number(c["sigma"]) for c in items],
        "g2_text": [f"{number(c['g2']):.3g} ± {number(c['sigma']):.2g}" for c in items],
        "coupling_gev": [number(c.get("coupling_gev")) for c in items],
        "rescan_cavity_frequency_hz": [number(c["rescan_cavity_frequency_hz"]) for c in items],
        "rescan_lo_frequency_hz": [number(c["rescan_lo_frequency_hz"]) for c in items],
        "runs": [", ".join(f"{r['run']} ({100 * r['weight']:.0f} %)" for r in c.get("runs") or [])
                 for c in items],
    }


def runs_used_columns(doc: Mapping[str, Any]) -> dict[str, list]:
    """Runs in the physics: LO and cavity (Hz), loaded Q, N slices, files, live time (s), and the
    measured noise over 1/sqrt(N) (a check: about 1)."""
    rows = doc["runs_used"]
    out: dict[str, list] = {"run": [r["run"] for r in rows]}
    for key in RUNS_USED_COLUMNS[1:]:
        out[key] = [number(r.get(key)) for r in rows]
    return out


def runs_left_out_columns(doc: Mapping[str, Any]) -> dict[str, list]:
    """Runs the physics cannot use, each with the analysis' reason (as served, whole)."""
    rows = doc["runs_left_out"]
    return {"run": [r["run"] for r in rows], "reason": [str(r["reason"]) for r in rows],
            "n_slices": [number(r.get("n_slices")) for r in rows],
            "n_files": [number(r.get("n_files")) for r in rows]}


# --- the status line -------------------------------------------------------------------------------

def best_limit_text(doc: Mapping[str, Any]) -> str:
    """'|g| < 2.1e-14 GeV⁻¹ = 1.33 × KSVZ at 10,400.2051 MHz', or 'none' without a covered band."""
    best = doc.get("best_limit") or {}
    if best.get("g_limit_gev") is None or best.get("frequency_hz") is None:
        return "none"
    text = f"|g| < {best['g_limit_gev']:.3g} GeV⁻¹"
    if best.get("limit_over_ksvz") is not None:
        text += f" = {best['limit_over_ksvz']:.3g} × KSVZ"
    return text + f" at {best['frequency_hz'] / 1e6:,.4f} MHz"


def band_text(doc: Mapping[str, Any]) -> str:
    """'10,400.0123 .. 10,402.0456 MHz (1.94 MHz)', or 'none'."""
    b = doc.get("band") or {}
    if b.get("covered_low_hz") is None or b.get("covered_high_hz") is None:
        return "none"
    return (f"{b['covered_low_hz'] / 1e6:,.4f} .. {b['covered_high_hz'] / 1e6:,.4f} MHz "
            f"({number(b.get('covered_hz')) / 1e6:.3g} MHz)")


def clock(time_s: float) -> str:
    """hh:mm:ss, local time."""
    return time.strftime("%H:%M:%S", time.localtime(time_s))


def status_cells(doc: Mapping[str, Any], now_s: float) -> list[tuple[str, str]]:
    """The status line's figures, (label, text), from one document; now_s (Unix s) for the age."""
    updated = number(doc.get("updated_at_s"))
    age = f"{clock(updated)} ({max(now_s - updated, 0.0):.0f} s ago)" if math.isfinite(updated) else "n/a"
    expected = doc.get("expected_false_candidates")
    rejected = sum((doc.get("rejected") or {}).values())
    return [
        ("version", f"{doc['version']}"),
        ("files folded", f"{doc['files_folded']:,}" + (f" ({rejected} rejected)" if rejected else "")),
        ("updated", age),
        ("runs used / left out", f"{len(doc['runs_used'])} / {len(doc['runs_left_out'])}"
         + (f" (runs {doc['runs_pattern']}; {doc.get('other_runs', 0)} others skipped)" if doc.get("runs_pattern") else "")),
        ("candidates", f"{len(doc['candidates'])} above {number(doc['threshold_sigma']):.3f} σ"),
        ("false candidates expected", "n/a" if expected is None else f"{expected:.2f}"),
        ("best limit" + _confidence_text(doc), best_limit_text(doc)),
        ("band", band_text(doc)),
    ]


def _confidence_text(doc: Mapping[str, Any]) -> str:
    confidence = (doc.get("goal") or {}).get("confidence")
    return "" if confidence is None else f" ({100 * float(confidence):g} % CL)"
