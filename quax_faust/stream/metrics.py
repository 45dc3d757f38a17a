"""Prometheus metrics of every process of the chain (prometheus-client). docs/metrics.md lists them.

Names follow Prometheus conventions: a ``quax_`` prefix, base units in the name (``_seconds``,
``_bytes``), counters end in ``_total``.

- Workers register in prometheus-client's default registry and serve it at ``/metrics`` on their
  web port (app.py), together with Faust's own sensor (``faust_*``, see app.py) and the process
  collector (``process_*``: CPU, resident memory).
- The producer registers in ``PRODUCER_REGISTRY``, served by ``serve_producer_metrics`` on
  ``settings.producer_metrics_port`` (``quax produce`` starts it), so neither process exports the
  other's idle zeros.
"""

from __future__ import annotations

import logging

from typing import Mapping

from prometheus_client import (REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector,
                               start_http_server)

# --- workers: the slices agent (transform_slices) ---------------------------------------------
SLICES = Counter("quax_slices_total", "Whole slices counted into file spectra")
SAMPLE_BYTES = Counter("quax_sample_bytes_total", "Bytes of complex64 samples counted into file spectra")
DATA_SECONDS = Counter("quax_data_seconds_total",
                       "Seconds of detector data counted into file spectra (whole slices, plus each "
                       "finished file's dropped tail); its rate is the pipeline's real-time factor")
MESSAGES = Counter("quax_slice_messages_total", "Slice messages processed")
DUPLICATE_SLICES = Counter("quax_duplicate_slices_total", "Slices received again and ignored")
REJECTED = Counter("quax_rejected_messages_total", "Messages rejected, by reason", ["topic", "reason"])
OFFSET_HOLES = Counter("quax_offset_holes_total", "Offsets the consumer skipped before an agent saw them; "
                       "not committed, read again (quax_faust/stream/faust_fixes.py)", ["topic"])
OFFSET_REREADS = Counter("quax_offset_rereads_total", "Seeks back to the committed offsets to read skipped "
                         "offsets again (quax_faust/stream/faust_fixes.py)")
REDELIVERED = Counter("quax_redelivered_messages_total", "Messages delivered again after a re-read, already "
                      "processed by this worker: skipped (faust_fixes.redelivered)", ["topic"])
TAIL_SAMPLES = Counter("quax_tail_samples_dropped_total",
                       "Samples in incomplete last slices, dropped as Welch does")
FILES_COMPLETED = Counter("quax_files_completed_total", "Files whose spectrum was published")
FILES_IN_PROGRESS = Gauge("quax_files_in_progress",
                          "Files with some but not all of their slices counted by this worker, in the "
                          "slices partitions assigned to it now")
FFT_SECONDS = Histogram("quax_fft_batch_seconds", "FFT + power sums of one slice message",
                        buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25))
TABLE_SECONDS = Histogram("quax_table_update_seconds",
                          "Reading, decoding, encoding and writing one file's table entry",
                          buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05))


class FilesInProgress:
    """The files this worker has partly counted, with their source partition (FILES_IN_PROGRESS).

    A file whose partition moved to another worker in a rebalance stops counting here: the gauge
    is computed at each scrape over the partitions assigned now.
    """

    def __init__(self) -> None:
        self._partition_of: dict[bytes, object] = {}
        self._assigned = lambda: None

    def note(self, key: bytes, tp, complete: bool, assigned) -> None:
        """After a slice message of file ``key`` from partition ``tp``; ``assigned()`` gives the
        partitions assigned now (a set of the same ``tp`` objects)."""
        self._assigned = assigned
        if complete:
            self._partition_of.pop(key, None)
        else:
            self._partition_of[key] = tp

    def count(self) -> int:
        try:
            assigned = self._assigned()
        except Exception:  # no consumer yet, or a rebalance under way: count everything known
            assigned = None
        for key in [k for k, tp in self._partition_of.items() if assigned is not None and tp not in assigned]:
            del self._partition_of[key]
        return len(self._partition_of)


files_in_progress = FilesInProgress()
FILES_IN_PROGRESS.set_function(files_in_progress.count)

# --- workers: the spectra agent (fold_spectra) --------------------------------------------------
FILES_FOLDED = Counter("quax_files_folded_total", "File spectra folded into a run average")
DUPLICATE_FILES = Counter("quax_duplicate_files_total", "File spectra received again and ignored")
FILE_LATENCY = Histogram(
    "quax_file_latency_seconds",
    "From the producer sending a file's last slice to its spectrum committed to the tables",
    buckets=(0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.25, 1.5,
             2.0, 3.0, 5.0, 10.0, 30.0, 60.0))
LAST_FILE_COMPLETED = Gauge("quax_last_file_completed_timestamp_seconds",
                            "Unix time the latest file spectrum was folded into its run")

# --- workers: the detector, per run (fold_spectra; quax_faust/search/detector_figures.py) -------
class _StaleRunFigures:
    """Forgets the per-run gauges while this worker does not fold the runs (does not hold the
    spectra partition): after a rebalance moved the folding elsewhere, its last values here would
    be stale. A collector of no metric, registered before the run gauges, so a scrape clears them
    before it collects them. (Counters and histograms stay: a flat counter says nothing new.)"""

    def describe(self):
        return []

    def collect(self):
        if not _folds_here():
            for gauge in _RUN_GAUGES:
                gauge.clear()
        return []


REGISTRY.register(_StaleRunFigures())
RUN_INBAND_POWER = Gauge("quax_run_inband_power_volts_squared",
                         "In-band power of the run's latest folded file: its mean PSD summed over the "
                         "searched band times the bin width (V**2)", ["run"])
RUN_NOISE_RATIO = Gauge("quax_run_noise_level_ratio",
                        "Median PSD over the searched band of the run's latest folded file over that of "
                        "the run's first file", ["run"])
RUN_BINS_OVER_THRESHOLD = Gauge("quax_run_bins_over_threshold",
                                "Searched bins (blocks) of the run average above the candidate threshold "
                                "in the latest search", ["run"])
RUN_CANDIDATES = Gauge("quax_run_candidates", "Candidates of the run above threshold in the latest search",
                       ["run"])
RUN_PERSISTENT_CANDIDATES = Gauge("quax_run_persistent_candidates",
                                  "Candidates of the run above threshold in persist_searches consecutive "
                                  "searches", ["run"])
RUN_LAST_FILE = Gauge("quax_run_last_file_folded_timestamp_seconds",
                      "Unix time the run's latest file was folded into its average", ["run"])
RUN_POWER_STEP = Histogram("quax_run_inband_power_step_ratio",
                           "|P_k+1 / P_k - 1| of the in-band powers of each two consecutive files of the run, "
                           "observed once both are folded", ["run"],
                           buckets=(0.001, 0.003, 0.01, 0.03, 0.05, 0.1, 0.2, 0.5, 1.0))
RUN_TURNED_PERSISTENT = Counter("quax_run_candidates_turned_persistent_total",
                                "Candidates of the run that became persistent", ["run"])
_RUN_GAUGES = (RUN_INBAND_POWER, RUN_NOISE_RATIO, RUN_BINS_OVER_THRESHOLD, RUN_CANDIDATES,
               RUN_PERSISTENT_CANDIDATES, RUN_LAST_FILE)
_RUN_METRICS = (*_RUN_GAUGES, RUN_POWER_STEP, RUN_TURNED_PERSISTENT)
RUNS_EXPORTED = 8
"""Runs whose figures a worker exports: the most recently folded ones (a worker lives for many runs)."""
_runs_exported: dict[str, None] = {}  # in the order they were last folded


def _folds_here() -> bool:  # until the first fold; set_run_figures gives the real test
    return True


def set_run_figures(run: str, *, folded_at_s: float, folds_here, file=None, noise_ratio: float | None = None,
                    steps=(), search=None) -> None:
    """Export a run's detector figures after one of its files was folded.

    file: detector_figures.FileFigures of that file; noise_ratio: its noise level over the run's
    first file's; steps: relative_step of each pair of consecutive files completed by this one;
    search: detector_figures.SearchFigures of the search that followed (None if none ran).
    folds_here(): does this worker fold the runs now (hold the spectra partition)?
    """
    global _folds_here
    _folds_here = _guarded(folds_here)
    _runs_exported.pop(run, None)
    _runs_exported[run] = None
    while len(_runs_exported) > RUNS_EXPORTED:
        old = next(iter(_runs_exported))
        del _runs_exported[old]
        for metric in _RUN_METRICS:
            try:
                metric.remove(old)
            except KeyError:
                pass
    RUN_LAST_FILE.labels(run=run).set(folded_at_s)
    if file is not None:
        RUN_INBAND_POWER.labels(run=run).set(file.inband_power_v2)
    if noise_ratio is not None:
        RUN_NOISE_RATIO.labels(run=run).set(noise_ratio)
    histogram = RUN_POWER_STEP.labels(run=run)  # exists from the first file: increase() sees the first step
    for step in steps:
        histogram.observe(step)
    turned = RUN_TURNED_PERSISTENT.labels(run=run)
    if search is not None:
        RUN_BINS_OVER_THRESHOLD.labels(run=run).set(search.bins_over_threshold)
        RUN_CANDIDATES.labels(run=run).set(search.candidates)
        RUN_PERSISTENT_CANDIDATES.labels(run=run).set(search.persistent_candidates)
        turned.inc(search.turned_persistent)


def _guarded(test):
    def folds_here() -> bool:
        try:
            return bool(test())
        except Exception:  # no consumer yet, or a rebalance under way: export what we have
            return True
    return folds_here


# --- workers: consumer lag of the agents' source partitions -------------------------------------
CONSUMER_LAG = Gauge("quax_consumer_lag_messages",
                     "Messages in an assigned source partition not processed yet by this worker "
                     "(the partition's high watermark minus the next offset to process)",
                     ["topic", "partition"])
_lag_exported: set[tuple[str, int]] = set()


def set_consumer_lag(lags: Mapping[tuple[str, int], int]) -> None:
    """Export ``{(topic, partition): lag}`` for the partitions assigned now; forget the others."""
    for topic, partition in _lag_exported - set(lags):
        CONSUMER_LAG.remove(topic, str(partition))
    for (topic, partition), lag in lags.items():
        CONSUMER_LAG.labels(topic=topic, partition=str(partition)).set(max(0, lag))
    _lag_exported.clear()
    _lag_exported.update(lags)


# --- workers: memory (docs/reliability.md, "Memory") ----------------------------------------------
HEAP_BYTES = Gauge("quax_worker_heap_bytes",
                   "glibc heap of this worker: bytes in use, freed bytes kept mapped, blocks served "
                   "by mmap", ["state"])
TABLE_MEMORY_BYTES = Gauge("quax_table_memory_bytes",
                           "RocksDB memory of this worker's tables against its caps "
                           "(settings table_*_budget_bytes)", ["kind", "measure"])


def set_memory(heap: Mapping[str, int] | None, tables: Mapping[str, tuple[int, int]]) -> None:
    """Export the heap counts ({state: bytes}) and the tables' {kind: (used, cap)} bytes."""
    for state, value in (heap or {}).items():
        HEAP_BYTES.labels(state=state).set(value)
    for kind, (used, cap) in tables.items():
        TABLE_MEMORY_BYTES.labels(kind=kind, measure="used").set(used)
        TABLE_MEMORY_BYTES.labels(kind=kind, measure="cap").set(cap)


# --- the producer (DAQ emulator) -----------------------------------------------------------------
PRODUCER_REGISTRY = CollectorRegistry()
ProcessCollector(registry=PRODUCER_REGISTRY)
PRODUCER_FILES = Counter("quax_producer_files_sent_total", "File pairs sent and acknowledged by the broker",
                         registry=PRODUCER_REGISTRY)
PRODUCER_SLICES = Counter("quax_producer_slices_sent_total", "Whole slices sent",
                          registry=PRODUCER_REGISTRY)
PRODUCER_MESSAGES = Counter("quax_producer_messages_sent_total", "Slice messages sent",
                            registry=PRODUCER_REGISTRY)
PRODUCER_BYTES = Counter("quax_producer_bytes_sent_total", "Bytes of slice messages sent (wire format)",
                         registry=PRODUCER_REGISTRY)
PRODUCER_DATA_SECONDS = Counter("quax_producer_data_seconds_total",
                                "Seconds of detector data sent; its rate is the achieved pace",
                                registry=PRODUCER_REGISTRY)
PRODUCER_SKIPPED = Counter("quax_producer_files_skipped_total", "Files not sent, by reason",
                           ["reason"], registry=PRODUCER_REGISTRY)
PRODUCER_SEND_SECONDS = Histogram(
    "quax_producer_file_send_seconds",
    "From handing a file's first message to the Kafka client to the broker's ack of its last",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0),
    registry=PRODUCER_REGISTRY)
PRODUCER_REALTIME_FACTOR = Gauge("quax_producer_realtime_factor",
                                 "Achieved pace since the producer started: data seconds per wall second",
                                 registry=PRODUCER_REGISTRY)
PRODUCER_TARGET_REALTIME_FACTOR = Gauge("quax_producer_target_realtime_factor",
                                        "Requested pace (1 = real time, +Inf = as fast as possible)",
                                        registry=PRODUCER_REGISTRY)
PRODUCER_SEND_RETRIES = Counter(
    "quax_producer_send_retries_total",
    "Attempts to re-send the files in flight on a new Kafka client after the broker failed to take "
    "them (down, unreachable, no leader, timed out); one per backoff",
    registry=PRODUCER_REGISTRY)
PRODUCER_BLOCKED_SECONDS = Gauge(
    "quax_producer_blocked_seconds",
    "Seconds since the producer first failed to reach the broker in the current outage "
    "(0 while files are acked)",
    registry=PRODUCER_REGISTRY)


def serve_producer_metrics(port: int, host: str = "127.0.0.1"):
    """Serve the producer's metrics at http://host:port/metrics from a daemon thread (port 0: don't).

    Returns the HTTP server (``.shutdown()`` stops it), or None.
    """
    if not port:
        return None
    try:
        server, _thread = start_http_server(port, addr=host, registry=PRODUCER_REGISTRY)
    except OSError as exc:  # e.g. another producer on this machine: send anyway, say so
        logging.getLogger(__name__).warning(
            "producer metrics not served: %s:%d: %s (set QUAX_PRODUCER_METRICS_PORT)", host, port, exc.strerror)
        return None
    return server
