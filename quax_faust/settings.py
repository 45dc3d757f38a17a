"""The one settings object of quax-stream.

Defaults describe the real QUAX detector and a single-machine deployment. Every field can be
overridden by an environment variable ``QUAX_<FIELD>`` (e.g. ``QUAX_BROKER=127.0.0.1:19092``) and
most commands take the same name as a flag (``--broker``). Nothing else in the code base repeats
these numbers.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

ENV_PREFIX = "QUAX_"
DEMO_ENV_PREFIX = "QUAX_DEMO_"  # knobs of ops/demo/produce.sh, not settings
REPO_DIR = Path(__file__).resolve().parent.parent
"""The checkout, when quax runs from one (the tests and ops/ scripts read its files). In an installed
wheel this is site-packages: nothing at run time depends on it but the jar defaults below, which
prefer a checkout's var/ (where ops/setup.sh fetched the jars)."""


def _working_var_dir() -> Path:
    return Path.cwd() / "var"


def _jars_dir(name: str) -> Path:
    """var/<name> of the checkout when quax runs from one, else of the working directory."""
    in_checkout = (REPO_DIR / "pyproject.toml").is_file() and (REPO_DIR / "ops").is_dir()
    return (REPO_DIR / "var" if in_checkout else _working_var_dir()) / name


@dataclass(frozen=True)
class Settings:
    # --- the detector and the DSP ------------------------------------------------------------
    sample_rate_hz: float = 2e6
    """ADC sample rate of each channel (i and q), samples per second."""
    slice_len: int = 3072
    """Samples per FFT slice (3 x 1024); the spectrum has this many bins of sample_rate_hz/slice_len Hz."""
    lo_frequency_hz: float = 0.0
    """Local-oscillator frequency added to the baseband frequency axis (Hz)."""
    fft_threads: int = 1
    """FFTW threads per worker process; 1 is the right value on a 2-core box shared with a broker."""
    fft_block_rows: int = 16
    """Slices transformed, squared and summed per block: 16 keeps a block's buffers in a 2 MiB L2
    (docs/performance.md, "The FFT stage"); the result does not depend on it."""

    # --- the wire and the broker -----------------------------------------------------------------
    broker: str = "127.0.0.1:9092"
    """Kafka bootstrap servers, host:port[,host:port...]."""
    security_protocol: str = "PLAINTEXT"
    """How clients talk to the broker: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL (docs/deploy.md)."""
    sasl_mechanism: str = "SCRAM-SHA-256"
    sasl_username: str = ""
    sasl_password: str = ""
    """Set it through QUAX_SASL_PASSWORD (never on the command line: ps shows arguments)."""
    ssl_cafile: str = ""
    """PEM file of the CA that signed the broker's certificate (SSL, SASL_SSL)."""
    slices_topic: str = "slices"
    spectra_topic: str = "spectra"
    metadata_topic: str = "run-metadata"
    """Topic (1 partition, compacted, key run) of each run's metadata (docs/usage.md, "Run metadata")."""
    partitions: int = 4
    """Partitions of the slices topic; a multiple of the worker count."""
    replication_factor: int = 1
    """Replicas of every topic, ours and Faust's changelogs: 1 on one broker, 3 on a cluster."""
    slices_per_message: int = 128
    """Consecutive slices of one file carried by one Kafka message (3 MiB at 3072 samples)."""
    producer_files_in_flight: int = 2
    """Files the producer queues before awaiting the oldest one's acks (1: one file at a time)."""
    producer_request_timeout_s: float = 60.0
    """How long the producer waits for the broker (metadata, room in a batch, acks) before it calls
    the broker unreachable and re-sends the files in flight after a backoff (s)."""
    max_message_bytes: int = 16 * 1024 * 1024
    """Largest record the producer, the broker and the consumers accept (bytes)."""
    slices_retention_s: float = 7 * 86400.0
    """How long the broker keeps the raw slices (s; -1: forever); 16 MB/s of disk at 2 MS/s, so 9.7 TB
    for 7 days (`quax topics` prints it). spectra and candidates are kept forever (stream/topics.py)."""

    # --- the Faust workers -----------------------------------------------------------------------
    app_id: str = "quax"
    workers: int = 4
    web_host: str = "127.0.0.1"
    web_hosts: str = ""
    """Web host of each worker, comma-separated in worker order, for workers on machines of their
    own (e.g. 127.0.0.2,127.0.0.3 or lab1.lab,lab2.lab): worker k listens on its host and advertises
    it to the others, which forward views to it; readers find worker k there. Empty: web_host for all."""
    web_bind: str = ""
    """Address a worker's views listen on when it is not its web host (0.0.0.0: every interface,
    e.g. in a container whose advertised host belongs to the machine). Empty: its web host."""
    web_port_base: int = 6066
    """Worker k serves its web views on web_port_base + k."""
    route_timeout_s: float = 10.0
    """How long a worker waits to connect to, then for each byte from, the worker owning a table
    partition when it forwards a view there (s); then it answers 504 naming that worker (502 at
    once if refused). Below http_timeout_s, so readers see the name."""
    session_timeout_s: float = 30.0
    """A worker silent this long is declared dead and its partitions move (kill -9 failover time).
    Shorter fails over faster but, on a loaded box, declares busy workers dead."""
    stream_buffer_maxsize: int = 32
    """Messages buffered per partition inside a worker (each up to a few MiB)."""
    table_memtable_budget_bytes: int = 32 << 20
    """RocksDB memtables of all tables of one worker together stay under this (bytes;
    quax_faust/stream/table_store.py)."""
    table_block_cache_budget_bytes: int = 32 << 20
    """One RocksDB block cache per worker, shared by all its tables, index and filter blocks
    included (bytes)."""
    heap_trim_interval_s: float = 10.0
    """How often a worker hands the free pages of its heap back to the kernel (s; 0: never). The
    malloc tuning keeps freed memory for reuse (malloc.py); this bounds what it keeps."""
    var_dir: Path = field(default_factory=_working_var_dir)
    """Runtime data: worker RocksDB stores, broker logs, producer checkpoints (default: ./var of the
    working directory)."""
    kafka_lib_dir: Path = field(default_factory=lambda: _jars_dir("kafka-lib"))
    """Apache Kafka's jars for the brokers quax starts itself (tests, `quax bench`), fetched from Maven
    Central by ops/kafka/broker.sh install (ops/setup.sh) when missing (docs/deploy.md)."""

    # --- metrics (quax_faust/stream/metrics.py, ops/prometheus/, docs/metrics.md) ------------------------
    producer_metrics_port: int = 9464
    """`quax produce` serves its Prometheus metrics on web_host:this/metrics (0: not at all)."""
    consumer_lag_interval_s: float = 1.0
    """How often each worker refreshes quax_consumer_lag_messages (s)."""
    prometheus_port: int = 9090
    """Prometheus (ops/prometheus/run.sh) listens on web_host:this."""
    prometheus_scrape_interval_s: float = 5.0
    """How often Prometheus scrapes the workers and the producer (s); rules use 1 m windows."""

    # --- the candidate search (quax_faust/search/, docs/analysis.md) -----------------------------------
    candidates_topic: str = "candidates"
    """Topic (1 partition, key run) of new and updated candidates, JSON."""
    baseline_window_hz: float = 65_000.0
    """Savitzky-Golay window of the passband fit (Hz; 101 bins at 651 Hz): far wider than a line,
    far narrower than passband features."""
    baseline_polyorder: int = 4
    candidate_threshold_sigma: float = 5.0
    """Global significance a candidate must exceed, after the look-elsewhere correction over every
    block searched (5 sigma global is about 6.4 sigma per bin over 2600 bins)."""
    line_width_hz: float = 0.0
    """Expected line width: adjacent bins are co-added in blocks this wide (0 = single bins; a
    virialised axion line is about 1e-6 of its frequency: ~10 kHz at 10 GHz)."""
    search_band_fraction: float = 0.85
    """Searched baseband |f| <= this fraction of sample_rate_hz/2 (keeps off the anti-alias roll-off)."""
    dc_exclude_hz: float = 2000.0
    """Bins within this distance of 0 Hz baseband (the I/Q mixer's DC spike) are not searched."""
    persist_searches: int = 3
    """A candidate is persistent once above threshold in this many consecutive searches (files)."""

    # --- Spark batch reprocessing (spark_batch/: `quax reprocess`, `quax verify`) ---------------
    spark_master: str = "local[2]"
    """Where the batch job runs: local[N] on this machine, or spark://host:7077 for a cluster."""
    spark_driver_memory: str = "1g"
    spark_jars_dir: Path = field(default_factory=lambda: _jars_dir("spark-jars"))
    """Spark's Kafka source jars, fetched by ops/spark/install.sh (ops/spark/pom.xml)."""
    verify_tolerance: float = 1e-6
    """`quax verify`: largest power difference allowed, relative to the run's mean level (or to the
    bin's own power where that is larger: docs/spark.md)."""

    # --- the live campaign (quax_faust/campaign/: `quax campaign-live`, docs/analysis.md) -----------
    campaign_port: int = 6060
    """The live campaign service serves its document and metrics on web_host:this."""
    campaign_runs: str = ""
    """The runs of the live campaign: shell patterns of run ids, comma-separated (e.g. "step-*");
    empty: every run on the spectra topic. Other runs' files are skipped unread."""
    campaign_refresh_s: float = 1.0
    """Least time between two analyses of the live campaign (s): files arriving faster are
    folded, and analysed together at most this often."""
    campaign_snapshot_s: float = 30.0
    """How often the live campaign saves its state under var_dir/campaign (s): a restart reads
    the spectra topic from there, not from its beginning."""
    campaign_target_significance: float = 5.0
    """The live campaign's candidate threshold is set so that an axion expected at this
    significance passes it campaign_detection_probability of the time."""
    campaign_detection_probability: float = 0.95

    # --- readers of the tables (export, dashboard) -----------------------------------------------
    http_timeout_s: float = 30.0

    # --- the live dashboard (dashboard/, `bokeh serve dashboard`) --------------------------------
    dashboard_port: int = 5006
    dashboard_refresh_s: float = 1.0
    """How often the page asks the workers for news (s); a new file arrives every 4.19 s."""
    dashboard_http_timeout_s: float = 2.0
    """Timeout of each dashboard request to a worker (s): a dead worker must not freeze the page."""
    dashboard_rate_window_s: float = 60.0
    """Window over which files/s, slices/s and the real-time factor are averaged (s)."""
    dashboard_behind_s: float = 4.194
    """The health strip turns red when the last file's latency or the consumer lag (as seconds of
    data) exceeds this: one DAQ file (2**23 samples at 2 MS/s)."""
    waterfall_files: int = 60
    """Most recent files shown in the waterfall."""
    excess_threshold_sigma: float = 5.0
    """Bins of the run average whose normalised excess exceeds this are marked on the dashboard."""

    # derived -------------------------------------------------------------------------------------
    @property
    def bin_width_hz(self) -> float:
        return self.sample_rate_hz / self.slice_len

    @property
    def slice_duration_s(self) -> float:
        return self.slice_len / self.sample_rate_hz

    def worker_host(self, index: int) -> str:
        """Worker ``index``'s web host: its entry of web_hosts, else web_host."""
        hosts = [host.strip() for host in self.web_hosts.split(",") if host.strip()]
        if not hosts:
            return self.web_host
        if not 0 <= index < len(hosts):
            raise ValueError(f"web_hosts names {len(hosts)} hosts ({self.web_hosts}), none for worker {index}: "
                             f"give one host per worker, in worker order")
        return hosts[index]

    def worker_url(self, index: int) -> str:
        return f"http://{self.worker_host(index)}:{self.web_port_base + index}"

    @property
    def worker_urls(self) -> list[str]:
        return [self.worker_url(k) for k in range(self.workers)]

    @property
    def campaign_url(self) -> str:
        """The live campaign service (`quax campaign-live`): its document is at /campaign/."""
        return f"http://{self.web_host}:{self.campaign_port}"

    def replace(self, **changes: Any) -> "Settings":
        """A copy with some fields changed (None values are ignored, so CLI defaults can pass through)."""
        changes = {k: v for k, v in changes.items() if v is not None}
        return dataclasses.replace(self, **{k: _convert(self, k, v) for k, v in changes.items()})

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        """Defaults overridden by QUAX_<FIELD> environment variables."""
        environ = os.environ if environ is None else environ
        base = cls()
        changes = {}
        for f in fields(cls):
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw is not None:
                changes[f.name] = raw
        known = {ENV_PREFIX + f.name.upper() for f in fields(cls)}
        for name in sorted(environ):
            if name.startswith(ENV_PREFIX) and name not in known and not name.startswith(DEMO_ENV_PREFIX):
                close = difflib.get_close_matches(name, known, n=1)
                logging.getLogger(__name__).warning(
                    "%s is not a quax setting and is ignored%s (`quax settings` lists them)", name,
                    f"; did you mean {close[0]}?" if close else "")
        return base.replace(**changes)


def _convert(settings: Settings, name: str, value: Any) -> Any:
    """Turn a string from the environment or the command line into the field's type."""
    if name not in {f.name for f in fields(settings)}:
        raise ValueError(f"unknown setting {name!r}")
    current = getattr(settings, name)
    if not isinstance(value, str) or isinstance(current, str):
        return Path(value) if isinstance(current, Path) else value
    try:
        if isinstance(current, bool):
            return value.lower() in {"1", "true", "yes", "on"}
        if isinstance(current, int):
            return int(value)
        if isinstance(current, float):
            return float(value)
        if isinstance(current, Path):
            return Path(value)
    except ValueError:
        raise ValueError(f"setting {name}: {value!r} is not a valid {type(current).__name__}") from None
    return value


def settings_fields() -> list[dataclasses.Field]:
    return list(fields(Settings))


__all__ = ["Settings", "settings_fields"]
