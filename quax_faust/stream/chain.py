"""One worker's topics and tables, shared by its agents, timers and web views (stream/app.py
declares them; this module only holds them and reads table values back)."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

from quax_faust.core import run_meta, wire
from quax_faust.core.accumulators import FileAccumulator, RunAccumulator
from quax_faust.search.spectrum_search import SearchConfig
from quax_faust.search_settings import config_from_settings
from quax_faust.settings import Settings

_CHAINS: "weakref.WeakKeyDictionary[Any, Chain]" = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class Chain:
    """The Faust app of one worker with its settings, topics and tables (all values raw bytes)."""

    settings: Settings
    app: Any  # faust.App
    slices_topic: Any
    spectra_topic: Any
    rejected_topic: Any
    candidates_topic: Any
    metadata_topic: Any
    files: Any  # table: run/file key -> FileAccumulator bytes (partitioned like slices)
    runs: Any  # table: run -> RunAccumulator bytes (1 partition)
    file_spectra: Any  # table: run/file key -> FileSpectrum bytes (1 partition)
    candidates: Any  # table: run -> candidates document, JSON (1 partition)
    run_metadata: Any  # table: run -> the run's metadata record, JSON (core/run_meta.py; 1 partition)
    search_config: SearchConfig = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "search_config", config_from_settings(self.settings))

    def attach(self) -> "Chain":
        """Make this chain findable from its app (web views get the app, not the chain)."""
        _CHAINS[self.app] = self
        return self

    @staticmethod
    def of(app) -> "Chain":
        return _CHAINS[app]

    def run(self, run: str) -> RunAccumulator | None:
        """The run's accumulator, or None; a corrupt value raises StateError (bad_table_value)."""
        stored = self.runs.get(run.encode())
        return RunAccumulator.from_bytes(stored) if stored else None

    def metadata(self, run: str) -> dict[str, Any]:
        """The run's recorded metadata fields ({} if none recorded)."""
        stored = self.run_metadata.get(run.encode())
        return run_meta.decode(stored)[1] if stored else {}

    def lo_frequency_hz(self, run: str) -> float:
        """The run's LO as recorded in its metadata (Hz)."""
        return run_meta.lo_frequency_hz(self.metadata(run), self.settings.lo_frequency_hz)

    def file_spectrum(self, run: str, file_index: int) -> wire.FileSpectrum | None:
        stored = self.file_spectra.get(wire.file_key(run, file_index))
        return wire.decode_file_spectrum(stored) if stored else None

    def file_state(self, key: bytes) -> FileAccumulator | None:
        stored = self.files.get(key)
        return FileAccumulator.from_bytes(stored) if stored else None
