"""The detector's health, file by file: the figures the alerts watch (docs/metrics.md).

Pure numpy, like the rest of quax_faust.search: after folding a file into its run, the worker
(stream/agents.py) computes these and exports them per run (stream/metrics.py).

- *In-band power* of a file: its mean power spectral density summed over the searched band (the
  baseband the search looks at: ``|f| <= band_fraction * fs/2``, the DC bins left out) times the
  bin width, in V**2. It follows the amplifier gain: a step from one file to the next is a gain
  jump.
- *Noise level* of a file: the median PSD over the same band (V**2/Hz); a median, so a line does
  not move it. Divided by the run's first file's, it says whether the noise rose since the start.
- From the search of the run average: blocks (single bins by default) above the threshold, the
  candidates above it now, how many of those are persistent, and how many just became so.

Spectra are fftshifted (V**2/Hz), as everywhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterable

import numpy as np

from quax_faust.search.spectrum_search import SearchResult, searched_bins


@lru_cache(maxsize=8)
def in_band(slice_len: int, sample_rate_hz: float, band_fraction: float, dc_exclude_hz: float) -> np.ndarray:
    """(slice_len,) bool, read-only: the bins the search looks at (spectrum_search.searched_bins)."""
    band = searched_bins(slice_len, sample_rate_hz, band_fraction, dc_exclude_hz)[0]
    band.flags.writeable = False
    return band


@dataclass(frozen=True)
class FileFigures:
    """What one file's spectrum says about the detector."""

    inband_power_v2: float
    """Mean PSD summed over the band times the bin width (V**2)."""
    noise_psd: float
    """Median PSD over the band (V**2/Hz)."""


def file_figures(mean: np.ndarray, sample_rate_hz: float, band: np.ndarray) -> FileFigures:
    """The figures of one file spectrum.

    mean: (slice_len,) float, the file's mean periodogram (V**2/Hz, fftshifted); band: (slice_len,)
    bool (``in_band``). A tone A*exp(2j*pi*f*t) in the band adds A**2 to the in-band power.
    """
    mean = np.asarray(mean, dtype=np.float64)
    if mean.shape != band.shape:
        raise ValueError(f"spectrum of shape {mean.shape}, band mask of shape {band.shape}")
    in_band_psd = mean[band]
    if in_band_psd.size == 0:
        raise ValueError("the band holds no bin")
    bin_width_hz = sample_rate_hz / mean.size
    return FileFigures(inband_power_v2=float(in_band_psd.sum() * bin_width_hz),
                       noise_psd=float(np.median(in_band_psd)))


def relative_step(earlier: float, later: float) -> float:
    """|later / earlier - 1|: how far a figure moved from one file to the next (0.1 = 10 %)."""
    if not earlier > 0:
        raise ValueError(f"the earlier value must be positive, got {earlier}")
    return abs(later / earlier - 1.0)


def noise_ratio(figures: FileFigures, reference: FileFigures) -> float:
    """The file's noise level over the reference's (the run's first file): 1 while nothing changed."""
    if not reference.noise_psd > 0:
        raise ValueError(f"the reference noise level must be positive, got {reference.noise_psd}")
    return figures.noise_psd / reference.noise_psd


@dataclass(frozen=True)
class SearchFigures:
    """What one search of the run average says (counts)."""

    bins_over_threshold: int
    """Searched blocks (bins, for line_width_hz 0) above the global threshold in this search."""
    candidates: int
    """Candidates above threshold now."""
    persistent_candidates: int
    """Of those, the persistent ones (above threshold in persist_searches consecutive searches)."""
    turned_persistent: int
    """Candidates that became persistent in this search."""


def search_figures(result: SearchResult, document: dict[str, Any], changed: Iterable[dict[str, Any]],
                   persist_searches: int) -> SearchFigures:
    """Count what a search found.

    result: the search (spectrum_search.search_spectrum); document, changed: what
    candidates.update_candidates made of it (the run's candidates, the records it changed).
    """
    records = document.get("candidates", [])
    return SearchFigures(
        bins_over_threshold=int(np.count_nonzero(result.local_significance > result.local_threshold_sigma)),
        candidates=sum(1 for r in records if r["above_threshold"]),
        persistent_candidates=sum(1 for r in records if r["above_threshold"] and r["persistent"]),
        turned_persistent=sum(1 for r in changed if r["status"] != "dropped" and r["persistent"]
                              and r["consecutive_searches"] == persist_searches))
