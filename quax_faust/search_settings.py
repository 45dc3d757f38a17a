"""The candidate search's knobs from the settings: the one bridge between Settings and
quax_faust.search (which never imports the settings). The live agent, ``quax analyse`` and the
dashboard all take their SearchConfig from here."""

from __future__ import annotations

from quax_faust.search.spectrum_search import SearchConfig
from quax_faust.settings import Settings


def config_from_settings(settings: Settings) -> SearchConfig:
    """The SearchConfig of these settings (candidate_threshold_sigma becomes threshold_sigma)."""
    return SearchConfig(baseline_window_hz=settings.baseline_window_hz,
                        baseline_polyorder=settings.baseline_polyorder,
                        line_width_hz=settings.line_width_hz,
                        search_band_fraction=settings.search_band_fraction,
                        dc_exclude_hz=settings.dc_exclude_hz,
                        threshold_sigma=settings.candidate_threshold_sigma,
                        lo_frequency_hz=settings.lo_frequency_hz,
                        persist_searches=settings.persist_searches)
