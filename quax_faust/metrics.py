"""Prometheus metrics of the workers (prometheus-client). Names follow Prometheus conventions.

Each worker serves them at ``/metrics`` on its own web port (see app.py).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

SLICES = Counter("quax_slices_total", "Whole slices counted into file spectra")
SAMPLE_BYTES = Counter("quax_sample_bytes_total", "Bytes of complex64 samples received")
MESSAGES = Counter("quax_slice_messages_total", "Slice messages processed")
DUPLICATE_SLICES = Counter("quax_duplicate_slices_total", "Slices received again and ignored")
REJECTED = Counter("quax_rejected_messages_total", "Messages rejected, by reason", ["topic", "reason"])
TAIL_SAMPLES = Counter("quax_tail_samples_dropped_total",
                       "Samples in incomplete last slices, dropped as Welch does")
FILES_COMPLETED = Counter("quax_files_completed_total", "Files whose spectrum was published")
FILES_FOLDED = Counter("quax_files_folded_total", "File spectra folded into a run average")
DUPLICATE_FILES = Counter("quax_duplicate_files_total", "File spectra received again and ignored")
FILE_LATENCY = Histogram(
    "quax_file_latency_seconds",
    "From the producer sending a file's last slice to its spectrum committed to the tables",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0, 60.0))
FFT_SECONDS = Histogram("quax_fft_batch_seconds", "FFT + power sums of one slice message",
                        buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25))
TABLE_SECONDS = Histogram("quax_table_update_seconds", "Reading and writing one table entry",
                          buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05))
LAST_FILE_COMPLETED = Gauge("quax_last_file_completed_timestamp_seconds",
                            "Unix time the latest file spectrum was folded into its run")
