"""A run's candidates as the run grows: tracking across searches, the table value.

Each search (``spectrum_search.search_spectrum`` on the run average after a file is folded) yields the
excesses above threshold *now*. This module follows them from search to search: when each was first
seen (the latest file folded at that moment), whether it has stayed above threshold since
(persistent), and its current significance even after it faded. The document it keeps is the
``candidates`` table value (JSON) and the body of the view ``/quax/runs/{run}/candidates/``.

Pure (numpy + json); ``quax analyse`` (quax_faust/tools/analyse_cmd.py) replays it offline.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from quax_faust.search.spectrum_search import SearchConfig, SearchResult, search_spectrum

MAX_RECORDS = 100
"""Candidates kept per run: all those above threshold first, then faded ones by peak significance."""


def empty_document(run: str, *, config: SearchConfig) -> dict[str, Any]:
    """The document of a run that has not been searched yet."""
    return {"run": run, "threshold_sigma": config.threshold_sigma, "n_slices": 0,
            "n_files": 0, "searched_file_index": None, "candidates": []}


def update_candidates(previous: dict[str, Any] | None, result: SearchResult, run: str,
                      file_index: int, n_files: int, persist_searches: int
                      ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Fold one search into the run's candidate document.

    previous: the document so far (None for the first search). file_index: the latest file folded
    into the searched average; n_files: files in it. Returns (document, changed), changed being
    the records to publish, each with ``status`` "new", "updated" (still above threshold) or
    "dropped" (fell below threshold in this search).
    """
    records = [dict(r) for r in (previous or {}).get("candidates", [])]
    tolerance = 2 * result.block_len  # a line between two bins may peak in either
    changed: list[dict[str, Any]] = []
    matched: set[int] = set()
    for cand in result.candidates:
        near = [k for k, r in enumerate(records)
                if k not in matched and abs(r["bin"] - cand.bin) <= tolerance]
        fields = {"bin": cand.bin, "frequency_hz": cand.frequency_hz, "significance": cand.significance,
                  "local_significance": cand.local_significance, "power": cand.power,
                  "psd": cand.psd, "baseline_psd": cand.baseline_psd, "last_seen_file": file_index,
                  "above_threshold": True}
        if near:
            k = min(near, key=lambda j: abs(records[j]["bin"] - cand.bin))
            rec = records[k]
            streak = rec["consecutive_searches"] + 1 if rec["above_threshold"] else 1
            rec.update(fields, consecutive_searches=streak,
                       peak_significance=max(rec["peak_significance"], cand.significance))
            status = "updated"
        else:
            rec = {**fields, "first_seen_file": file_index, "first_seen_n_slices": result.n_slices,
                   "consecutive_searches": 1, "peak_significance": cand.significance}
            records.append(rec)
            k = len(records) - 1
            status = "new"
        matched.add(k)
        rec["persistent"] = rec["consecutive_searches"] >= persist_searches
        changed.append({**rec, "status": status})
    starts = result.block_start
    for k, rec in enumerate(records):
        if k in matched:
            continue
        at = int(np.searchsorted(starts, rec["bin"]))
        here = at < starts.size and starts[at] == rec["bin"]
        rec["significance"] = float(result.significance[at]) if here else None
        rec["local_significance"] = float(result.local_significance[at]) if here else None
        was_above = rec["above_threshold"]
        rec.update(above_threshold=False, consecutive_searches=0, persistent=False)
        if was_above:
            changed.append({**rec, "status": "dropped"})
    records.sort(key=lambda r: (not r["above_threshold"], -(r["significance"] if r["above_threshold"]
                                                            else r["peak_significance"])))
    doc = {
        "run": run,
        "threshold_sigma": result.threshold_sigma,
        "local_threshold_sigma": result.local_threshold_sigma,
        "n_slices": result.n_slices,
        "n_files": n_files,
        "searched_file_index": file_index,
        "n_trials": result.n_trials,
        "block_bins": result.block_len,
        "bin_width_hz": result.bin_width_hz,
        "lo_frequency_hz": result.lo_frequency_hz,
        "baseline_window_bins": result.window_bins,
        "baseline_polyorder": result.polyorder,
        "noise_scale": result.noise_scale,
        "noise_scale_applied": result.noise_scale_applied,
        "candidates": records[:MAX_RECORDS],
    }
    return doc, changed


def search_run(previous: dict[str, Any] | None, run: str, mean: np.ndarray, n_slices: int,
               sample_rate_hz: float, file_index: int, n_files: int, *, config: SearchConfig
               ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Search a run average and fold the result into the run's document (what the live agent does)."""
    result = search_spectrum(mean, n_slices, sample_rate_hz, config=config)
    return update_candidates(previous, result, run, file_index, n_files, config.persist_searches)


def replay_run(run: str, file_index: np.ndarray, file_mean: np.ndarray, file_n_slices: np.ndarray,
               sample_rate_hz: float, *, config: SearchConfig) -> dict[str, Any]:
    """The live search replayed offline: files folded in file order, one search after each.

    file_mean: (n_files, n_bins) per-file mean periodograms (V**2/Hz, fftshifted); file_n_slices:
    (n_files,). Live, files are folded in completion order, so first_seen_file may differ by a
    file or two from the replay.
    """
    order = np.argsort(file_index, kind="stable")
    power_sum = np.zeros(file_mean.shape[1])
    n_slices = 0
    doc = None
    for count, k in enumerate(order, start=1):
        power_sum += file_mean[k] * file_n_slices[k]
        n_slices += int(file_n_slices[k])
        doc, _ = search_run(doc, run, power_sum / n_slices, n_slices, sample_rate_hz,
                            int(file_index[k]), count, config=config)
    return doc if doc is not None else empty_document(run, config=config)


def encode(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()


def decode(data: bytes) -> dict[str, Any]:
    return json.loads(data)
