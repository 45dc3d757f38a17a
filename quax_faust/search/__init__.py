"""The candidate search (docs/analysis.md), pure numpy/scipy: it imports only quax_faust.core.

spectrum_search: one search of a run average (``search_spectrum``, its knobs ``SearchConfig``),
built on baseline (the fits), exact_tail (the noise tail and its tables) and look_elsewhere (the
thresholds); candidates: a run's candidates from search to search (the table document).
"""
