"""Throughput of the Spark batch job (`quax reprocess`) on local[2], in real-time factor.

Starts its own broker on a free 127.0.0.1 port, writes N real-size synthetic file pairs (2**23
samples = 4.194 s of data each), sends them to the slices topic at full speed, then times
``reprocess --from slices`` (cold: Python workers start and plan FFTW; then warm). Then sends
synthetic per-file spectra (as the live workers would publish them) for a long run and times
``reprocess --from spectra``.

    .venv/bin/python bench/spark_bench.py [--files 16] [--spectra-files 2000] [--keep]

Prints data seconds / wall seconds for each run (docs/performance.md, "Spark").
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
from aiokafka import AIOKafkaProducer

from quax_faust.core import daq, synth, wire
from quax_faust.tools.launch import Broker, free_port
from quax_faust.ingest.producer import produce_directory
from quax_faust.settings import Settings
from quax_faust.stream.topics import ensure_topics

SAMPLES_PER_FILE = 1 << 23


class SparkMemory:
    """Peak summed RSS of Spark's processes (the JVM and the Python workers), sampled every 0.2 s."""

    def __init__(self):
        self.peak_bytes = self.peak_jvm_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.wait(0.2):
            total = jvm = 0
            for proc in me.children(recursive=True):
                try:
                    cmd = " ".join(proc.cmdline())
                    if "org.apache.spark" in cmd or "pyspark" in cmd:
                        rss = proc.memory_info().rss
                        total += rss
                        jvm += rss if "org.apache.spark" in cmd else 0
                except psutil.Error:
                    continue
            self.peak_bytes = max(self.peak_bytes, total)
            self.peak_jvm_bytes = max(self.peak_jvm_bytes, jvm)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak_bytes


async def _send_spectra(settings: Settings, run: str, n_files: int) -> None:
    """n_files FileSpectrum records of real-size files, as the live workers publish them."""
    rng = np.random.default_rng(0)
    n_slices, tail = divmod(SAMPLES_PER_FILE, settings.slice_len)
    producer = AIOKafkaProducer(bootstrap_servers=settings.broker, max_request_size=settings.max_message_bytes,
                                linger_ms=5)
    await ensure_topics(settings)
    await producer.start()
    try:
        mean = rng.exponential(1e-6, settings.slice_len)
        for k in range(n_files):
            spec = wire.FileSpectrum(run, k, n_slices, tail, settings.sample_rate_hz, 1.0, 2.0, 3.0,
                                     mean * (1 + 0.01 * np.sin(k)), mean / np.sqrt(n_slices))
            await producer.send(settings.spectra_topic, wire.encode_file_spectrum(spec), key=run.encode())
        await producer.flush()
    finally:
        await producer.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=16, help="file pairs (4.194 s of data each)")
    parser.add_argument("--runs", type=int, default=2, help="timed reprocess runs (the first is cold)")
    parser.add_argument("--spectra-files", type=int, default=2000,
                        help="per-file spectra for the --from spectra run (one per 4.194 s of data)")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="quax-spark-bench-"))
    broker = Broker(port=free_port(2), data_dir=work / "kafka", heap="-Xmx768m -Xms256m").start()
    try:
        settings = Settings().replace(broker=broker.bootstrap, var_dir=work / "var", spark_master=args.master,
                                      slices_topic="bench-slices", spectra_topic="bench-spectra")
        t = time.monotonic()
        for k in range(args.files):
            daq.write_pair(work / "daq", k, synth.synth_file(k, SAMPLES_PER_FILE, synth.SynthModel(), seed=1))
        print(f"synthesised {args.files} pairs in {time.monotonic() - t:.1f} s", flush=True)
        report = asyncio.run(produce_directory(settings, work / "daq", "bench", "max", progress=False))
        shutil.rmtree(work / "daq")
        print(f"produced {report.files_sent} files, {report.messages_sent} messages, "
              f"{report.bytes_sent / 1e9:.2f} GB in {report.wall_seconds:.1f} s", flush=True)

        from spark_batch.job import reprocess
        from spark_batch.session import get_session

        memory = SparkMemory()
        t = time.monotonic()
        spark = get_session(settings, {"spark.ui.enabled": "false"})
        print(f"Spark session ({args.master}) started in {time.monotonic() - t:.1f} s", flush=True)
        for k in range(args.runs):
            result = reprocess(settings, "bench", "slices", work / f"out{k}", spark=spark)
            mb_s = report.bytes_sent / 1e6 / result.wall_seconds
            print(f"run {k} ({'cold' if k == 0 else 'warm'}): {result.n_files} files, {result.n_slices} "
                  f"slices, {result.data_seconds:.1f} s of data in {result.wall_seconds:.1f} s = "
                  f"{result.realtime_factor:.2f}x real time ({mb_s:.0f} MB/s of samples, "
                  f"{result.n_slices / result.wall_seconds:.0f} slices/s)", flush=True)
        asyncio.run(_send_spectra(settings, "long", args.spectra_files))
        result = reprocess(settings, "long", "spectra", work / "out-spectra", spark=spark)
        print(f"from spectra: {result.n_files} files ({result.data_seconds / 3600:.1f} h of data) in "
              f"{result.wall_seconds:.1f} s = {result.realtime_factor:.0f}x real time; a week "
              f"(144,000 files) would take ~{144_000 / result.n_files * result.wall_seconds / 60:.0f} min "
              f"at this rate", flush=True)
        spark.stop()
        print(f"peak RSS of Spark (JVM + Python workers): {memory.stop() / 2**30:.2f} GiB, of which "
              f"the JVM {memory.peak_jvm_bytes / 2**30:.2f} GiB; "
              f"cores: {os.cpu_count()}; load average now: {os.getloadavg()[0]:.1f}")
    finally:
        broker.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
