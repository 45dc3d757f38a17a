"""The SparkSession of the batch job: local[2] by default, any ``spark://`` master unchanged.

Spark's Kafka source comes from the jars ops/spark/install.sh fetched into settings.spark_jars_dir
(spark.jars: shipped to the executors by the driver; no Ivy download at run time).
"""

from __future__ import annotations

import os
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
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    if local:
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
        **({"spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1"} if local else {}),
        **(conf or {}),
    }
    builder = SparkSession.builder
    for key, value in options.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    if not local:
        _ship_code(spark)
    return spark


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
