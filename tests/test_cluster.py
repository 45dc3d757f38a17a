"""Scale out: a 3-broker KRaft cluster on loopback, replication 3 / min.insync 2; one broker killed
mid-run loses nothing and the result still equals the oracle."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from quax_faust.core import daq, synth
from quax_faust.settings import REPO_DIR
from quax_faust.tools.launch import Workers, free_port, wait_for_run
from quax_faust.settings import Settings
from tests.oracle import assert_run_matches_oracle
from tests.test_reliability import N_SAMPLES, produce_in_background

pytestmark = [pytest.mark.broker, pytest.mark.slow]  # a 3-broker cluster
CLUSTER = REPO_DIR / "ops" / "kafka" / "cluster.sh"


@pytest.fixture
def cluster(tmp_path):
    base = free_port(6)
    env = {**os.environ, "QUAX_VAR": str(tmp_path / "var"), "KAFKA_HEAP": "-Xmx384m -Xms128m"}
    # the jars are shared with the single-node broker
    (tmp_path / "var").mkdir()
    os.symlink(REPO_DIR / "var" / "kafka-lib", tmp_path / "var" / "kafka-lib")
    try:  # a node that fails to start must not leave the others running after the test
        subprocess.run(["bash", str(CLUSTER), "start", str(base)], env=env, check=True)
        bootstrap = subprocess.run(["bash", str(CLUSTER), "bootstrap", str(base)], env=env, check=True,
                                   capture_output=True, text=True).stdout.strip()
        yield bootstrap, tmp_path / "var" / f"kafka-cluster-{base}"
    finally:
        subprocess.run(["bash", str(CLUSTER), "stop", str(base)], env=env, check=False)


def test_one_broker_of_three_killed_mid_run(cluster, tmp_path):
    bootstrap, cluster_dir = cluster
    model = synth.SynthModel(tones=((-400_000.0, 0.1),))
    for k in range(16):
        daq.write_pair(tmp_path / "daq", k, synth.synth_file(k, N_SAMPLES, model, seed=3))
    settings = Settings().replace(broker=bootstrap, replication_factor=3, var_dir=tmp_path / "wvar",
                                  workers=2, web_port_base=free_port(2), slices_per_message=4)
    workers = Workers(settings, tmp_path / "logs").start()
    try:
        workers.wait_assigned(timeout_s=180)
        producer = produce_in_background(settings, tmp_path / "daq", "cluster", seconds=14)
        time.sleep(5)
        victim = int((cluster_dir / "node-2.pid").read_text())
        os.kill(victim, signal.SIGKILL)
        producer.join(240)
        assert not producer.errors, producer.errors
        wait_for_run(settings, "cluster", 16, timeout_s=240)
        assert_run_matches_oracle(settings, tmp_path / "daq", "cluster", range(16))
    finally:
        workers.stop()
