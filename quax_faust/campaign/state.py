"""The live campaign's state: every run's average and metadata, folded from records, and its analysis.

No Kafka here: the service hands over each record (topic offset, key, value). Spectra are folded
exactly as the workers' ``fold_spectra`` agent folds them (core.accumulators.RunAccumulator, in
the spectra topic's order: one partition), so each run's average equals the one in the workers'
run table bit for bit; metadata records are merged as the workers merge them (core.run_meta: a
run's metadata may grow, a contradicting record is rejected). A record the workers reject is
rejected here too, counted by reason and logged, and the fold goes on.

After new records, ``analyse`` puts only the changed runs into the incremental grand spectrum
(search.live_grand.LiveGrand) and returns the campaign's result (search.campaign_result.Campaign),
equal to ``quax campaign --all`` on the same runs.
"""

from __future__ import annotations

import fnmatch
import logging
from collections import Counter
from dataclasses import dataclass, field

from quax_faust.core import run_meta, wire
from quax_faust.core.accumulators import RunAccumulator
from quax_faust.core.errors import QuaxError
from quax_faust.search import exclusion, rescan
from quax_faust.search.campaign_result import Campaign
from quax_faust.search.live_grand import LiveGrand
from quax_faust.search.run_excess import CampaignConfig, RunSpectrum

log = logging.getLogger("quax.campaign")
SOURCE = "spectra topic"
"""Where the live campaign read its runs (the campaign file's runs_used/source)."""


@dataclass(frozen=True)
class Goal:
    """What the analysis is set for: the candidate threshold and the exclusion's confidence."""

    target_significance: float = 5.0
    detection_probability: float = 0.95
    confidence: float = exclusion.CONFIDENCE
    power_floor_sigma: float = 0.0

    @property
    def threshold_sigma(self) -> float:
        return rescan.threshold_for_goal(self.target_significance, self.detection_probability)


@dataclass
class CampaignState:
    """Runs, their metadata, the next offset to read of each topic, and what was rejected."""

    config: CampaignConfig = field(default_factory=CampaignConfig)
    goal: Goal = field(default_factory=Goal)
    runs_pattern: str = ""
    """Shell patterns of the campaign's run ids, comma-separated; "" for every run."""
    runs: dict[str, RunAccumulator] = field(default_factory=dict)
    metadata: dict[str, dict] = field(default_factory=dict)
    next_offsets: dict[str, int] = field(default_factory=lambda: {"spectra": 0, "metadata": 0})
    """Topic role ("spectra", "metadata") -> the first offset not yet folded."""
    rejected: Counter = field(default_factory=Counter)
    """(topic role, reason) -> records rejected."""
    files_folded: int = 0
    duplicate_files: int = 0
    changed: set[str] = field(default_factory=set)
    """Runs whose average or metadata changed since the last analysis."""
    other_runs: set[str] = field(default_factory=set)
    """Runs seen on the topics that are not the campaign's (runs_pattern)."""

    def __post_init__(self) -> None:
        self._engine = LiveGrand(self.config)
        self.changed |= set(self.runs)
        self._patterns = [p.strip() for p in self.runs_pattern.split(",") if p.strip()]

    def wanted(self, run: str) -> bool:
        """Whether a run is the campaign's."""
        return not self._patterns or any(fnmatch.fnmatchcase(run, p) for p in self._patterns)

    def _other(self, key: bytes | None) -> bool:
        """A record of another run, by its key (the run id): skipped unread."""
        if not self._patterns or not isinstance(key, bytes):
            return False
        run = key.decode(errors="replace")
        if self.wanted(run):
            return False
        self.other_runs.add(run)
        return True

    # --- folding records --------------------------------------------------------------------------

    def fold_spectrum(self, offset: int, key: bytes | None, value: bytes | None) -> str | None:
        """Fold a spectra record (a finished file) into its run, once; the run if its average
        changed, None for a repeat or a rejected record."""
        self.next_offsets["spectra"] = offset + 1
        if self._other(key):
            return None
        try:
            spectrum = wire.decode_file_spectrum(value if isinstance(value, bytes) else b"")
            if not self.wanted(spectrum.run):  # its key said otherwise
                self.other_runs.add(spectrum.run)
                return None
            acc = self.runs.get(spectrum.run) or RunAccumulator.for_spectrum(spectrum)
            if not acc.fold(spectrum):
                self.duplicate_files += 1
                return None
        except QuaxError as exc:
            self._reject("spectra", offset, exc)
            return None
        self.runs[spectrum.run] = acc
        self.files_folded += 1
        self.changed.add(spectrum.run)
        return spectrum.run

    def record_metadata(self, offset: int, key: bytes | None, value: bytes | None) -> str | None:
        """Merge a metadata record into its run's; the run if its metadata grew, else None."""
        self.next_offsets["metadata"] = offset + 1
        if self._other(key):
            return None
        try:
            run, fields = run_meta.decode(value if isinstance(value, bytes) else b"")
            if key != run.encode():
                raise wire.WireError("key_mismatch", f"key {key!r} but the record is run {run!r}")
            merged = run_meta.merge(self.metadata.get(run, {}), fields, what=f"run {run}")
        except QuaxError as exc:
            self._reject("metadata", offset, exc)
            return None
        if merged == self.metadata.get(run):
            return None
        self.metadata[run] = merged
        if run in self.runs:
            self.changed.add(run)
        return run

    def _reject(self, role: str, offset: int, exc: QuaxError) -> None:
        self.rejected[(role, exc.reason)] += 1
        log.warning("live campaign: rejected %s record at offset %d: %s", role, offset, exc)

    # --- the analysis -------------------------------------------------------------------------------

    def spectrum(self, run: str) -> RunSpectrum:
        """Run ``run`` as the campaign analysis takes it (its average is copied)."""
        acc = self.runs[run]
        return RunSpectrum(run, acc.mean.copy(), acc.n_slices, acc.sample_rate_hz, dict(self.metadata.get(run, {})))

    def analyse(self) -> Campaign:
        """The campaign after the changed runs are put into the grand spectrum (only they are
        recomputed). Runs the physics cannot use are in ``grand.left_out`` with the reason."""
        for run in sorted(self.changed):
            self._engine.put(self.spectrum(run))
        self.changed.clear()
        return self._engine.campaign(self.goal.threshold_sigma, self.goal.confidence, self.goal.power_floor_sigma,
                                     {run: SOURCE for run in self.runs})
