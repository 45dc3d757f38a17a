"""`quax reprocess` and `quax verify` on a real Spark standalone cluster (ops/spark/cluster.sh: a
master and two workers of 1 core / 1 GiB on 127.0.0.1) against the 3-broker Kafka cluster of
test_cluster.py: the same outputs as local[2], VERDICT EQUAL, executors on both workers (the
master's JSON), and still EQUAL when one worker dies mid-job; an unreachable master fails fast."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest

from quax_faust.ingest.producer import produce_directory
from quax_faust.settings import REPO_DIR
from quax_faust.tools.launch import Workers, free_port, settings_env, wait_for_run
from spark_batch.session import MASTER_CONNECT_TIMEOUT_S, _on_loopback, master_addresses
from tests.conftest import stack_settings, wait_until, write_synthetic_run
from tests.test_cluster import cluster  # noqa: F401  (the 3-broker Kafka cluster fixture)

SPARK_CLUSTER = REPO_DIR / "ops" / "spark" / "cluster.sh"
N_FILES, N_SAMPLES, PER_MESSAGE = 6, 3072 * 20 + 512, 4
"""A small run: 6 files of 20 whole slices, 5 slice messages each."""
RUN = "clusterrun"
QUAX = [sys.executable, "-m", "quax_faust.tools.cli"]


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


@pytest.fixture
def spark_cluster(tmp_path):
    """ops/spark/cluster.sh start on free ports, in the background (it takes ~20 s, as long as the
    Kafka cluster: call .ready() before use); stop (each daemon's process group, executors too)
    whatever the test did, and SIGKILL any group still alive after that."""
    port = free_port(6)  # master RPC, master UI, 2 x (worker RPC, worker UI)
    env = {**os.environ, "QUAX_VAR": str(tmp_path / "spark-var")}
    cluster_dir = tmp_path / "spark-var" / f"spark-cluster-{port}"
    start = subprocess.Popen(["bash", str(SPARK_CLUSTER), "start", str(port)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def ready() -> None:
        out, _ = start.communicate(timeout=180)
        assert start.returncode == 0, out + "".join(p.read_text()[-2000:] for p in cluster_dir.glob("*.log"))

    try:
        yield SimpleNamespace(master=f"spark://127.0.0.1:{port}", json=f"http://127.0.0.1:{port + 1}/json/",
                              dir=cluster_dir, ready=ready)
    finally:
        if start.poll() is None:
            start.kill()
            start.wait()
        groups = {int(p.read_text()) for p in cluster_dir.glob("*.pid")}
        subprocess.run(["bash", str(SPARK_CLUSTER), "stop", str(port)], env=env, timeout=60, check=False)
        for pgid in groups:
            try:
                os.killpg(pgid, signal.SIGKILL)  # a leftover: cluster.sh stop should have ended it
            except ProcessLookupError:
                continue


def quax(args: list[str], settings, log_dir: Path) -> subprocess.Popen:
    """`quax ARGS` in a child process, the stack's settings in its environment (QUAX_*); its output
    in log_dir/ARGS[0]-N.out and .err (files, not pipes: two run at once)."""
    env = {**os.environ, **settings_env(settings)}
    log_dir.mkdir(exist_ok=True)
    stem = log_dir / f"{args[0]}-{len(list(log_dir.glob('*.out')))}"
    with open(stem.with_suffix(".out"), "w") as out, open(stem.with_suffix(".err"), "w") as err:
        proc = subprocess.Popen(QUAX + args, env=env, stdout=out, stderr=err)
    proc.stem = stem
    return proc


def finish(proc: subprocess.Popen, timeout_s: float = 240) -> tuple[int, str, str]:
    """Wait for a quax() child: (exit code, stdout, stderr)."""
    proc.wait(timeout_s)
    return proc.returncode, proc.stem.with_suffix(".out").read_text(), proc.stem.with_suffix(".err").read_text()


def outputs(out_dir: Path) -> dict[str, np.ndarray]:
    """run.npz, and the per-file spectra of files.parquet in file order."""
    with np.load(out_dir / "run.npz") as npz:
        data = {k: npz[k] for k in npz.files}
    files = pq.read_table(out_dir / "files.parquet").sort_by("file_index")
    for column in ("file_index", "n_slices", "complete", "duplicate_slices", "mean", "std"):
        data[f"parquet_{column}"] = np.array(files.column(column).to_pylist())
    return data


def assert_same_outputs(a: Path, b: Path) -> None:
    x, y = outputs(a), outputs(b)
    assert x.keys() == y.keys()
    for key in x:
        np.testing.assert_array_equal(x[key], y[key], err_msg=f"{key}: {a.name} vs {b.name}")


def executors_by_worker(spark_cluster, app_id: str) -> dict[str, int]:
    """{worker id: executors of app_id it ran (running or finished)}, from the master's JSON and the
    JSON page of each worker it lists."""
    master = get_json(spark_cluster.json)
    counts = {}
    for worker in master["workers"]:
        page = get_json(worker["webuiaddress"] + "/json/")
        counts[worker["id"]] = sum(e["appid"] == app_id for e in page["executors"] + page["finishedexecutors"])
    return counts


def app_ids(spark_cluster) -> list[str]:
    master = get_json(spark_cluster.json)
    return [a["id"] for a in master["activeapps"] + master["completedapps"]]


@pytest.mark.broker
@pytest.mark.slow  # 3 brokers, a Spark cluster, three Spark drivers
def test_verify_and_reprocess_on_a_spark_cluster_equal_local_even_after_a_worker_dies(
        spark_cluster, cluster, tmp_path):  # noqa: F811  (spark_cluster first: both start at once)
    bootstrap, _kafka_dir = cluster
    daq_dir = write_synthetic_run(tmp_path / "daq", N_FILES, N_SAMPLES, seed=21, tones=((-321_000.0, 0.2),))
    settings = stack_settings(SimpleNamespace(bootstrap=bootstrap), tmp_path / "var", workers=2,
                              replication_factor=3, slices_per_message=PER_MESSAGE)
    workers = Workers(settings, tmp_path / "logs").start()
    try:
        workers.wait_assigned(timeout_s=180)
        report = asyncio.run(produce_directory(settings, daq_dir, RUN, "max", progress=False))
        assert report.files_sent == N_FILES
        wait_for_run(settings, RUN, N_FILES, timeout_s=180)
        spark_cluster.ready()

        # local[2], the reference, and the cluster at the same time: both workers run an executor
        # of the cluster's application, and the outputs are the same.
        runs = {where: quax(["reprocess", "--run", RUN, "--from", "slices", "--out", str(tmp_path / where),
                             "--spark-master", master], settings, tmp_path / "quax-logs")
                for where, master in (("local", "local[2]"), ("cluster", spark_cluster.master))}
        for where, proc in runs.items():
            code, out, err = finish(proc)
            assert code == 0, (where, err[-3000:])
        (first_app,) = app_ids(spark_cluster)
        assert sorted(executors_by_worker(spark_cluster, first_app).values()) == [1, 1], \
            executors_by_worker(spark_cluster, first_app)
        assert_same_outputs(tmp_path / "local", tmp_path / "cluster")

        # verify on the cluster, one worker (and with it its executor) killed while it runs a task:
        # Spark runs the lost tasks again on the other, and the verdict is still EQUAL.
        ui_port, events = free_port(), tmp_path / "spark-events"
        events.mkdir()
        proc = quax(["verify", "--run", RUN, "--from", "slices", "--out", str(tmp_path / "killed"),
                     "--spark-master", spark_cluster.master, "--conf", f"spark.ui.port={ui_port}",
                     "--conf", "spark.eventLog.enabled=true", "--conf", "spark.eventLog.compress=false",
                     "--conf", f"spark.eventLog.dir={events.as_uri()}"],
                    settings, tmp_path / "quax-logs")
        try:
            victim = wait_until(lambda: _busy_worker(spark_cluster, ui_port, first_app), 180,
                                "an executor of the verify run busy with a task", interval_s=0.1)
            os.killpg(int((spark_cluster.dir / f"{victim}.pid").read_text()), signal.SIGKILL)
            code, out, err = finish(proc)
        finally:
            proc.kill()
        assert code == 0 and "VERDICT: EQUAL" in out, out + err[-3000:]
        assert_same_outputs(tmp_path / "local", tmp_path / "killed")
        lost = [e for path in events.rglob("events_*") for e in map(json.loads, path.read_text().splitlines())
                if e["Event"] == "SparkListenerTaskEnd" and e["Task End Reason"]["Reason"] == "ExecutorLostFailure"]
        assert lost, "no task was running on the killed worker's executor"
        wait_until(lambda: get_json(spark_cluster.json)["aliveworkers"] == 1, 90, "the master sees one worker gone")
    finally:
        workers.stop()


def _busy_worker(spark_cluster, ui_port: int, earlier_app: str) -> str | None:
    """The cluster.sh name (worker-K) of a worker whose executor of the running application (not
    earlier_app) has a task running, per the driver's REST API; None if none yet."""
    try:
        apps = [a for a in get_json(spark_cluster.json)["activeapps"] if a["id"] != earlier_app]
        if not apps:
            return None
        busy = {e["id"] for e in get_json(f"http://127.0.0.1:{ui_port}/api/v1/applications/{apps[0]['id']}/executors")
                if e["id"] != "driver" and e["activeTasks"] > 0}
        for worker in get_json(spark_cluster.json)["workers"]:
            page = get_json(worker["webuiaddress"] + "/json/")
            if any(e["appid"] == apps[0]["id"] and str(e["id"]) in busy for e in page["executors"]):
                return f"worker-{(worker['port'] - int(spark_cluster.master.rsplit(':', 1)[1])) // 2}"
    except (OSError, ValueError, KeyError):
        return None
    return None


@pytest.mark.slow  # the connect timeout runs out
def test_verify_against_an_unreachable_master_fails_fast_naming_it():
    """Nothing listens on one port; the other accepts no connection (its one-slot backlog is full,
    so the kernel drops the handshake): both fail within MASTER_CONNECT_TIMEOUT_S, exit 3."""
    closed = free_port()
    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        filler = socket.create_connection(full.getsockname(), timeout=2)  # fills the backlog
        for port, reason in ((closed, "Connection refused"), (full.getsockname()[1], "timed out")):
            master = f"spark://127.0.0.1:{port}"
            started = time.monotonic()
            proc = subprocess.run(QUAX + ["verify", "--run", RUN, "--spark-master", master, "--broker", "127.0.0.1:9"],
                                  capture_output=True, text=True, timeout=MASTER_CONNECT_TIMEOUT_S + 60)
            elapsed = time.monotonic() - started
            assert proc.returncode == 3, proc.stderr
            assert f"Spark master {master} unreachable" in proc.stderr and reason in proc.stderr, proc.stderr
            assert elapsed < MASTER_CONNECT_TIMEOUT_S + 20, elapsed  # the check, plus Python's start-up
        filler.close()


def test_master_urls_and_where_the_driver_listens():
    assert master_addresses("local[2]") == []
    assert master_addresses("spark://head:7077") == [("head", 7077)]
    assert master_addresses("spark://h1:7077,h2:7078") == [("h1", 7077), ("h2", 7078)]  # standby masters
    with pytest.raises(ValueError, match="expected spark://HOST:PORT"):
        master_addresses("spark://head")
    # On a loopback cluster the driver listens on 127.0.0.1, as for local[...]; elsewhere Spark's default.
    assert _on_loopback("local[2]") and _on_loopback("spark://127.0.0.1:7077") and _on_loopback("spark://localhost:7077")
    assert not _on_loopback("spark://spark-head:7077") and not _on_loopback("spark://127.0.0.1:7077,10.0.0.5:7077")
    assert not _on_loopback("yarn")
