"""The candidate search (docs/analysis.md), pure numpy/scipy: it imports only quax_faust.core.

spectrum_search: one search of a run average (``search_spectrum``, its knobs ``SearchConfig``),
built on baseline (the fits), exact_tail (the noise tail and its tables) and look_elsewhere (the
thresholds); candidates: a run's candidates from search to search (the table document).

The campaign analysis (docs/analysis.md, "The campaign analysis"): axion (the expected signal),
run_excess (a run's excess in (g/g_KSVZ)**2 and its baseline's response), grand (the grand
spectrum), rescan (thresholds, look-elsewhere, the rescan list), exclusion (limits on g_agg),
synthetic_campaign (stepped runs with metadata and injected axions, for tests).
"""
