"""Crashes, restarts and bad input on a real broker: nothing lost, nothing counted twice.

Each test would fail if its guarantee broke: the final tables are compared with the Welch oracle
(every slice exactly once) after the fault.
"""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from quax_faust import daq, synth, wire
from quax_faust.launch import Broker, free_port, wait_for_run
from quax_faust.producer import produce_directory
from tests.conftest import stack_settings, write_synthetic_run
from tests.kafka_io import read_topic, send_raw_async, wait_records
from tests.oracle import assert_run_matches_oracle

pytestmark = pytest.mark.broker
N_SAMPLES = 3072 * 20 + 512


@pytest.fixture
def daq_dir(tmp_path):
    return write_synthetic_run(tmp_path / "daq", 16, N_SAMPLES, seed=11, tones=((300_000.0, 0.1),))


def produce_in_background(settings, daq_dir, run, seconds: float | None, indices=None) -> threading.Thread:
    """Send the pairs spread over about `seconds` of wall time (None: as fast as they go)."""
    files = len(indices) if indices is not None else len(daq.scan_dir(daq_dir)[0])
    pace = "max" if seconds is None else files * N_SAMPLES / settings.sample_rate_hz / seconds
    errors = []

    def run_it():
        try:
            asyncio.run(produce_directory(settings, daq_dir, run, pace, indices=indices, progress=False))
        except Exception as exc:  # surfaced by the test
            errors.append(exc)

    thread = threading.Thread(target=run_it)
    thread.errors = errors
    thread.start()
    return thread


def owner_of(workers, tp: str) -> int:
    for k in workers.procs:
        health = workers.health(k)
        if health and tp in health["assigned"]:
            return k
    raise AssertionError(f"no worker owns {tp}")


def test_kill_9_of_a_worker_mid_run(make_stack, daq_dir):
    settings, workers = make_stack(workers=2, slices_per_message=4)
    producer = produce_in_background(settings, daq_dir, "kill9", seconds=12)
    time.sleep(4)
    # Kill the worker that holds the run tables (the spectra partition): the harshest case.
    victim = owner_of(workers, f"{settings.spectra_topic}/0")
    workers.kill(victim)
    producer.join(120)
    assert not producer.errors
    wait_for_run(settings, "kill9", 16, timeout_s=180)
    assert_run_matches_oracle(settings, daq_dir, "kill9", range(16))
    spectra = read_topic(settings.broker, settings.spectra_topic)
    assert sorted({wire.decode_file_spectrum(r.value).file_index for r in spectra}) == list(range(16))


def test_clean_restart_of_all_workers_restores_the_tables(make_stack, daq_dir):
    settings, workers = make_stack(workers=2, slices_per_message=4)
    asyncio.run(produce_directory(settings, daq_dir, "restart", "max", indices=range(8), progress=False))
    before = wait_for_run(settings, "restart", 8)
    workers.stop()
    workers.start()
    workers.wait_assigned()
    after = wait_for_run(settings, "restart", 8, timeout_s=60)  # before any new data arrives
    assert after["n_slices"] == before["n_slices"] and after["n_files"] == 8
    assert list((settings.var_dir / "workers").iterdir()), "RocksDB stores on disk"
    asyncio.run(produce_directory(settings, daq_dir, "restart", "max", indices=range(8, 16), progress=False))
    wait_for_run(settings, "restart", 16)
    assert_run_matches_oracle(settings, daq_dir, "restart", range(16))


def test_broker_restart_mid_run(make_stack, daq_dir, tmp_path):
    own = Broker(port=free_port(2), data_dir=tmp_path / "kafka-own").start()
    try:
        settings = stack_settings(own, tmp_path / "var-own", workers=2, slices_per_message=4)
        from quax_faust.launch import Workers

        workers = Workers(settings, tmp_path / "logs-own").start()
        try:
            workers.wait_assigned()
            producer = produce_in_background(settings, daq_dir, "brk", seconds=14)
            time.sleep(4)
            own.stop()
            time.sleep(3)
            own.start()
            producer.join(180)
            assert not producer.errors, producer.errors
            wait_for_run(settings, "brk", 16, timeout_s=180)
            assert_run_matches_oracle(settings, daq_dir, "brk", range(16))
            assert all(p.poll() is None for p in workers.procs.values()), "workers survived the outage"
        finally:
            workers.stop()
    finally:
        own.stop()


def rejected_by_reason(settings) -> dict[str, float]:
    totals: dict[str, float] = {}
    for url in settings.worker_urls:
        try:
            text = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
        except OSError:
            continue
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "quax_rejected_messages_total":
                    reason = sample.labels["reason"]
                    totals[reason] = totals.get(reason, 0) + sample.value
    return totals


def test_bad_messages_go_to_the_dead_letter_topic_and_the_run_goes_on(make_stack, daq_dir):
    settings, workers = make_stack(workers=2, slices_per_message=4)
    good = wire.encode_slice_batch(wire.SliceBatch("bad", 0, 0, 20, 512, 2e6, 1.0,
                                                   daq.whole_slices(daq.read_pair(daq.pair_paths(daq_dir, 0)), 3072)[:4]))
    wrong_version = bytearray(good)
    wrong_version[4] = 9
    spectrum = wire.encode_file_spectrum(wire.FileSpectrum("bad", 0, 1, 0, 2e6, 0, 0, 0, [1.0] * 8, [0.0] * 8))
    bad = {
        "truncated": (wire.file_key("bad", 0), good[:40]),
        "bad_length": (wire.file_key("bad", 0), good[:-16]),
        "bad_version": (wire.file_key("bad", 0), bytes(wrong_version)),
        "bad_magic": (b"foreign", b'{"json": "from another system"}' * 3),
        "key_mismatch": (wire.file_key("bad", 99), good),
    }

    async def send_all():
        for key, value in bad.values():
            await send_raw_async(settings.broker, settings.slices_topic, key, value)
        await send_raw_async(settings.broker, settings.slices_topic, wire.file_key("bad", 0), spectrum)

    asyncio.run(send_all())
    asyncio.run(produce_directory(settings, daq_dir, "bad", "max", progress=False))
    wait_for_run(settings, "bad", 16)
    dead = wait_records(settings.broker, f"{settings.slices_topic}.rejected", len(bad) + 1)
    # At least once: a rebalance may replay a bad message, so it can be there twice; each is there.
    sources = {dict(r.headers)["source"].split(b"/", 1)[1] for r in dead}
    assert len(sources) == len(bad) + 1
    reasons = {dict(r.headers)["reason"].decode() for r in dead}
    assert reasons == set(bad)
    counted = rejected_by_reason(settings)
    assert set(counted) == reasons and all(v >= 1 for v in counted.values())
    assert_run_matches_oracle(settings, daq_dir, "bad", range(16))


def rebalance_drill(make_stack, daq_dir, run: str, n_files: int, seconds: float | None,
                    steps: list[tuple[float, str, int]], timeout_s: float) -> None:
    """Worker 0 alone, then the producer in the background and steps of (wait s, "start"|"stop",
    worker) while it sends; the run must end equal to the Welch oracle."""
    settings, workers = make_stack(workers=3, slices_per_message=4, start=False)
    workers.start([0])
    workers.wait_assigned()
    producer = produce_in_background(settings, daq_dir, run, seconds=seconds)
    for wait_s, action, k in steps:
        time.sleep(wait_s)
        if action == "start":
            workers.start([k])
        else:
            workers.stop(k)
    producer.join(120)
    assert not producer.errors
    wait_for_run(settings, run, n_files, timeout_s=timeout_s)
    assert_run_matches_oracle(settings, daq_dir, run, range(n_files))


def test_workers_joining_mid_run_rebalance_without_loss(make_stack, daq_dir):
    rebalance_drill(make_stack, daq_dir, "join", 16, seconds=10,
                    steps=[(2, "start", 1), (3, "start", 2)], timeout_s=180)


def test_rebalances_with_a_backlog_lose_nothing(make_stack, tmp_path):
    """Workers join and leave while a backlog fills the agents' queues, which each rebalance clears
    (faust_fixes.py, fix 2): still every slice exactly once."""
    daq_dir = write_synthetic_run(tmp_path / "backlog", 32, 3072 * 300 + 100, seed=5)
    rebalance_drill(make_stack, daq_dir, "churn", 32, seconds=None,
                    steps=[(1, "start", 1), (2, "start", 2), (3, "stop", 1), (2, "start", 1)], timeout_s=240)
