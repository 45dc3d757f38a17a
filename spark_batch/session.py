"""The SparkSession of the batch job: local[2] by default, any ``spark://`` master unchanged.

A ``spark://`` master is first checked to accept a connection (check_master): Spark itself would
retry its registration for a minute and more. On a loopback master (ops/spark/cluster.sh) the driver
listens on 127.0.0.1, as for local[...], so the executors reach it there.

Spark's Kafka source comes from the jars ops/spark/install.sh fetched into settings.spark_jars_dir
(spark.jars: shipped to the executors by the driver; no Ivy download at run time).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
import tempfile
import zipfile
from pathlib import Path

from pyspark.sql import SparkSession

import quax_faust
import spark_batch
from quax_faust.settings import Settings

ARROW_BATCH_BYTES = 32 << 20
"""Target size of one Arrow batch between the JVM and Python (a few slice messages, not 10000)."""
JVM_OPTIONS = "-XX:+UseParallelGC"
"""Each record is a 3 MiB byte array: a 'humongous' object for G1 at a 1 GiB heap; the throughput
collector handles them without the extra pauses (faster warm runs in bench/spark_bench.py)."""
SHUFFLE_PARTITIONS = 8
"""Partitions of the small per-file shuffle (adaptive execution merges them further)."""
MASTER_CONNECT_TIMEOUT_S = 10.0
"""How long a ``spark://`` master's port may take to accept a connection before the job gives up
(per master of the URL). Spark's own registration would retry 3 x 20 s against a silent master."""


def master_addresses(master: str) -> list[tuple[str, int]]:
    """(host, port) of each master of a ``spark://h1:p1[,h2:p2]`` URL; [] for any other master."""
    if not master.startswith("spark://"):
        return []
    addresses = []
    for entry in master.removeprefix("spark://").split(","):
        host, sep, port = entry.strip().rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"Spark master {master!r}: expected spark://HOST:PORT[,HOST:PORT]")
        addresses.append((host.strip("[]"), int(port)))
    return addresses


def check_master(master: str, timeout_s: float = MASTER_CONNECT_TIMEOUT_S) -> None:
    """Raise RuntimeError, naming the master, if no master of a ``spark://`` URL accepts a TCP
    connection within timeout_s; nothing to check for local[...]."""
    reasons = []
    for host, port in master_addresses(master):
        try:
            socket.create_connection((host, port), timeout=timeout_s).close()
            return
        except OSError as exc:
            reasons.append(f"{host}:{port}: {exc.strerror or str(exc) or type(exc).__name__}")
    if reasons:
        raise RuntimeError(f"Spark master {master} unreachable within {timeout_s:g} s ({'; '.join(reasons)}): "
                           "is it running (ops/spark/cluster.sh status)? check --spark-master / QUAX_SPARK_MASTER")


def _on_loopback(master: str) -> bool:
    """local[...], or a spark:// URL whose masters are all on this machine's loopback interface."""
    if master.startswith("local"):
        return True

    def loopback(host: str) -> bool:
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return host == "localhost"

    addresses = master_addresses(master)
    return bool(addresses) and all(loopback(host) for host, _ in addresses)


def connector_jars(settings: Settings) -> list[Path]:
    """The Kafka source jars; raises with the fix if ops/spark/install.sh has not run."""
    jars = sorted(Path(settings.spark_jars_dir).glob("*.jar"))
    if not any(j.name.startswith("spark-sql-kafka-0-10_") for j in jars):
        raise RuntimeError(f"no spark-sql-kafka jar in {settings.spark_jars_dir}: run ops/spark/install.sh "
                           "(or make setup)")
    return jars


def records_per_arrow_batch(settings: Settings) -> int:
    """Slice messages per Arrow batch so one batch stays near ARROW_BATCH_BYTES."""
    message_bytes = settings.slices_per_message * settings.slice_len * 8
    return max(1, ARROW_BATCH_BYTES // message_bytes)


def get_session(settings: Settings, conf: dict[str, str] | None = None) -> SparkSession:
    """The running session, or a new one for settings.spark_master. ``conf`` adds or overrides
    Spark properties (e.g. {"spark.ui.enabled": "false"}); static ones apply only to a new JVM."""
    local = settings.spark_master.startswith("local")
    loopback = _on_loopback(settings.spark_master)  # the executors reach the driver at 127.0.0.1
    check_master(settings.spark_master)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    if loopback:
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    options = {
        "spark.master": settings.spark_master,
        "spark.app.name": "quax-reprocess",
        "spark.driver.memory": settings.spark_driver_memory,
        "spark.jars": ",".join(str(j) for j in connector_jars(settings)),
        "spark.sql.execution.arrow.maxRecordsPerBatch": str(records_per_arrow_batch(settings)),
        "spark.sql.execution.arrow.maxBytesPerBatch": str(ARROW_BATCH_BYTES),  # for larger messages
        "spark.sql.shuffle.partitions": str(SHUFFLE_PARTITIONS),
        "spark.driver.extraJavaOptions": JVM_OPTIONS,
        "spark.executor.extraJavaOptions": JVM_OPTIONS,
        "spark.python.worker.reuse": "true",  # one numpy/scipy import per Python worker, not per task
        "spark.ui.showConsoleProgress": "false",
        **({"spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1"} if loopback else {}),
        **(conf or {}),
    }
    builder = SparkSession.builder
    for key, value in options.items():
        builder = builder.config(key, value)
    try:
        spark = builder.getOrCreate()
    except Exception as exc:
        if not master_addresses(settings.spark_master):
            raise
        # e.g. a port that accepts connections but is no master's (its web UI's): Spark gives up
        # after 3 x 20 s and says only that its context was stopped.
        raise RuntimeError(f"Spark master {settings.spark_master} did not take the application "
                           f"({_java_reason(exc)}): is that the master's RPC port (7077 by default), "
                           "not its web UI's? See the Spark log above") from exc
    spark.sparkContext.setLogLevel("WARN")
    if not local:
        _ship_code(spark)
    return spark


def _java_reason(exc: Exception) -> str:
    """The Java exception's own line of a Py4JJavaError (its text starts with py4j's call site)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return next((line.lstrip(": ") for line in lines if line.startswith(": ")), lines[0] if lines else repr(exc))


SHIPPED_LIVE_MODULES = ("__init__.py", "core/__init__.py", "core/errors.py", "core/wire.py", "settings.py")
"""All of quax_faust the executors get: the message decoder (and its error type) and the settings. Not dsp, not the
accumulators: the recompute must not be able to reuse the live chain's numerics (recompute.py)."""


def shipped_files() -> list[Path]:
    """The source files sent to a cluster's executors: spark_batch and SHIPPED_LIVE_MODULES."""
    return ([_package_dir(quax_faust) / name for name in SHIPPED_LIVE_MODULES]
            + sorted(_package_dir(spark_batch).rglob("*.py")))


def _package_dir(package) -> Path:
    """Where an imported package's files are: a checkout or site-packages alike."""
    return Path(package.__file__).resolve().parent


def _ship_code(spark: SparkSession) -> None:
    """On a cluster, send shipped_files() to the executors (their Python still needs numpy, scipy
    and pyarrow: docs/spark.md). The zip comes first on the executors' sys.path, so it also hides
    the rest of an installed quax_faust from the tasks."""
    archive = Path(tempfile.mkdtemp(prefix="quax-code-")) / "quax_code.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in shipped_files():
            zf.write(path, path.relative_to(_package_dir(quax_faust).parent))
    spark.sparkContext.addPyFile(str(archive))
