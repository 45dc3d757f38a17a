"""JSON documents served by the workers' read-only web views, built from table values. No Kafka."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from quax_faust.core import dsp
from quax_faust.core.accumulators import RunAccumulator
from quax_faust.core.wire import FileSpectrum

AGREED_SETTINGS = ("app_id", "partitions", "slice_len", "sample_rate_hz", "slices_per_message",
                   "slices_topic", "spectra_topic", "candidates_topic", "metadata_topic",
                   "replication_factor", "max_message_bytes", "slices_retention_s", "workers")
"""Settings every process of one chain must share (docs/deploy.md); the health view reports them,
so `quax doctor` can tell a worker started with another slice length or app id."""


def floats(values: np.ndarray) -> list[float | None]:
    """A JSON-safe list: NaN and infinities become null."""
    return [v if math.isfinite(v) else None for v in np.asarray(values, dtype=float).tolist()]


def run_summary(acc: RunAccumulator) -> dict[str, Any]:
    duration_s = acc.n_slices * acc.slice_len / acc.sample_rate_hz
    return {
        "run": acc.run,
        "n_files": acc.n_files,
        "n_slices": acc.n_slices,
        "latest_file_index": acc.latest_file_index if acc.n_files else None,
        "data_seconds": duration_s,
        "duplicate_files": acc.duplicate_files,
        "tail_samples_dropped": acc.tail_samples_total,
        "first_completed_at_s": acc.first_completed_at_s if acc.n_files else None,
        "last_completed_at_s": acc.last_completed_at_s if acc.n_files else None,
        "slice_len": acc.slice_len,
        "sample_rate_hz": acc.sample_rate_hz,
    }


def run_document(acc: RunAccumulator, lo_frequency_hz: float) -> dict[str, Any]:
    """Run average with its standard error sigma/sqrt(N), all per bin in V**2/Hz."""
    return {
        **run_summary(acc),
        "file_indices": [int(i) for i in acc.files],
        "frequency_hz": floats(dsp.frequency_axis_hz(acc.slice_len, acc.sample_rate_hz, lo_frequency_hz)),
        "mean": floats(acc.mean),
        "std": floats(acc.std),
        "sem": floats(acc.sem),
    }


def file_document(spec: FileSpectrum, *, with_spectrum: bool = True) -> dict[str, Any]:
    """A finished file: times in Unix seconds; ``acquired_at_s`` (when the DAQ acquired the file)
    is null when unknown (a file sent before the producer read acquisition times)."""
    doc: dict[str, Any] = {
        "run": spec.run,
        "file_index": spec.file_index,
        "n_slices": spec.n_slices,
        "tail_samples": spec.tail_samples,
        "acquired_at_s": spec.acquired_at_s if math.isfinite(spec.acquired_at_s) else None,
        "first_produced_at_s": spec.first_produced_at_s,
        "last_produced_at_s": spec.last_produced_at_s,
        "completed_at_s": spec.completed_at_s,
        "latency_s": spec.latency_s,
    }
    if with_spectrum:
        doc["mean"] = floats(spec.mean)
        doc["std"] = floats(spec.std)
    return doc


def agreed_settings(settings) -> dict[str, Any]:
    """The AGREED_SETTINGS of a settings object, as JSON values."""
    return {name: getattr(settings, name) for name in AGREED_SETTINGS}
