"""The grand spectrum of a growing campaign, updated run by run (a live campaign's engine).

Pure numpy/scipy (docs/analysis.md, "The campaign analysis"). Each new file changes one run's
average; ``LiveGrand.put`` redoes only that run's work (its checks, excess, weighted sums and
response lookup: grand.PreparedRun), and ``grand`` re-assembles the campaign from every run's
kept contribution, in run-id order. The result equals ``grand_spectrum`` of the runs sorted by
id bit for bit (the offline ``quax campaign --all`` reads them so): the same terms, summed in the
same order. The grid's origin (the first kept run) and which runs sit off it are settled again
at each assembly, so a run sorting before the others may arrive at any time.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from quax_faust.search import exclusion, rescan
from quax_faust.search.campaign_result import LIVE, Campaign
from quax_faust.search.grand import (
    GrandSpectrum,
    LeftOut,
    PreparedRun,
    assemble,
    prepare_run,
)
from quax_faust.search.run_excess import CampaignConfig, RunSpectrum


class LiveGrand:
    """A campaign's runs, each prepared once per change; its grand spectrum on demand."""

    def __init__(self, config: CampaignConfig | None = None) -> None:
        self.config = CampaignConfig() if config is None else config
        self._prepared: dict[str, PreparedRun | LeftOut] = {}
        self._grand: GrandSpectrum | None = None

    @property
    def runs(self) -> list[str]:
        """The run ids held (kept or left out), sorted."""
        return sorted(self._prepared)

    def put(self, spectrum: RunSpectrum) -> None:
        """Add run ``spectrum.run`` or replace it (a new file changed its average, its metadata
        grew). A copy of its average and metadata is kept: the caller may reuse its own."""
        if not isinstance(spectrum, RunSpectrum):
            raise TypeError(f"LiveGrand.put takes a RunSpectrum, not {type(spectrum).__name__}")
        mean = np.array(spectrum.mean, copy=True)
        mean.flags.writeable = False
        kept = RunSpectrum(spectrum.run, mean, spectrum.n_slices, spectrum.sample_rate_hz, dict(spectrum.metadata))
        self._prepared[spectrum.run] = prepare_run(kept, self.config)
        self._grand = None

    def remove(self, run: str) -> None:
        """Take run ``run`` out of the campaign; KeyError naming it if it is not held."""
        if run not in self._prepared:
            raise KeyError(f"run {run!r} is not in the live campaign ({len(self._prepared)} runs held)")
        del self._prepared[run]
        self._grand = None

    def grand(self) -> GrandSpectrum:
        """``grand_spectrum`` of the runs held, sorted by run id (kept until the next change)."""
        if self._grand is None:
            self._grand = assemble([self._prepared[run] for run in self.runs], self.config)
        return self._grand

    def campaign(self, threshold_sigma: float, confidence: float = exclusion.CONFIDENCE,
                 power_floor_sigma: float = 0.0, sources: Mapping[str, str] | None = None) -> Campaign:
        """The campaign's analysis (grand spectrum, rescan list, exclusion curve, expected false
        candidates), equal to ``campaign_result.analyse`` of the runs sorted by id with the same
        sources (run -> where it was read; None or a run not named: LIVE). Unlike ``analyse`` it
        does not raise when no run can enter: a live campaign starts empty (see grand.left_out)."""
        grand = self.grand()
        sources = {} if sources is None else sources
        return Campaign(grand, rescan.rescan_list(grand, threshold_sigma),
                        exclusion.exclusion_curve(grand, confidence, power_floor_sigma), threshold_sigma,
                        rescan.expected_false_candidates(grand, threshold_sigma),
                        {run: sources.get(run, LIVE) for run in self.runs})
