"""Scale out (issue 18): Faust workers as separate machines, each on its own loopback address, and
more partitions than four.

- Three workers on 127.0.0.2, .3 and .4 against the 3-broker cluster of test_cluster.py: each one
  advertises its own address, the views, `quax export` and the dashboard's feed reach the run
  tables through any of them (forwarded across addresses to the owner), and the kill -9 of the
  "machine" holding the run tables mid-run still ends equal to the Welch oracle.
- Eight workers on eight partitions of `slices` (eight addresses): four more join mid-run, each
  ends with one partition, and nothing is lost or counted twice.
- A worker whose web host the others cannot reach: the views name it (502 at once when refused,
  504 after route_timeout_s when nothing answers), and so does the reader's error.

docs/deploy.md, "Workers on several machines", gives the same command lines for real machines.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from dashboard.feed import PollRequest, TableFeed
from quax_faust.client import TablesUnavailable, fetch_run, get_json
from quax_faust.settings import Settings
from quax_faust.tools.launch import Workers, free_port, settings_env, wait_for_run
from tests import test_cluster
from tests.conftest import (rebalances_done, stack_settings, wait_each_assigned, wait_until, worker_metrics,
                            write_synthetic_run)
from tests.oracle import assert_run_matches_oracle
from tests.test_reliability import N_SAMPLES, owner_of, produce_held_back, produce_in_background, run_files

pytestmark = [pytest.mark.broker, pytest.mark.slow]
cluster = test_cluster.cluster  # the 3-broker KRaft cluster fixture, as it is
SLICES_PER_FILE = N_SAMPLES // 3072


def loopback_hosts(n: int) -> str:
    """Workers' web hosts 127.0.0.2, 127.0.0.3, ... (Linux routes all of 127/8 to lo: no setup)."""
    return ",".join(f"127.0.0.{2 + k}" for k in range(n))


def reader_of(settings: Settings, k: int) -> Settings:
    """Settings of a reader that knows worker k only (export, dashboard): it must route the rest."""
    return settings.replace(workers=1, web_hosts=settings.worker_host(k), web_port_base=settings.web_port_base + k)


def http_get(url: str, timeout_s: float = 30.0) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def slices_partitions(workers: Workers, k: int) -> list[str]:
    return [tp for tp in workers.health(k)["assigned"] if tp.rsplit("/", 1)[0] == workers.settings.slices_topic]


def test_workers_on_their_own_addresses_lose_one_machine_mid_run(cluster, tmp_path):
    bootstrap, _ = cluster
    daq_dir = write_synthetic_run(tmp_path / "daq", 16, N_SAMPLES, seed=18, tones=((250_000.0, 0.1),))
    # session_timeout_s 15: the dead machine's partitions move 15 s after the kill, not 30.
    settings = Settings().replace(broker=bootstrap, replication_factor=3, var_dir=tmp_path / "wvar", workers=3,
                                  web_hosts=loopback_hosts(3), web_port_base=free_port(3), slices_per_message=4,
                                  session_timeout_s=15.0, dashboard_http_timeout_s=10.0)
    workers = Workers(settings, tmp_path / "logs").start()
    try:
        wait_each_assigned(workers, timeout_s=180)
        for k in range(3):  # each listens on its own address and advertises it to the others
            assert workers.health(k)["worker"].rstrip("/") == f"http://127.0.0.{2 + k}:{settings.web_port_base + k}"
        victim = owner_of(workers, f"{settings.spectra_topic}/0")  # the machine holding the run tables
        producer = produce_in_background(settings, daq_dir, "scale", seconds=14)
        wait_until(lambda: run_files(settings, "scale") >= 3, 120, "3 files folded")
        for k in range(3):  # only the owner holds the run table: the others' answers were forwarded to it
            runs = get_json(reader_of(settings, k), "/quax/runs/")["runs"]
            assert [r["run"] for r in runs] == ["scale"], (k, runs)
        folded = run_files(settings, "scale")
        assert folded < 16 and producer.is_alive(), "the machine goes while files are in flight"
        workers.kill(victim)
        print(f"kill -9 of worker {victim} ({settings.worker_url(victim)}) at {folded} of 16 files")
        producer.join(240)
        assert not producer.errors, producer.errors
        wait_for_run(settings, "scale", 16, timeout_s=240)
        data = assert_run_matches_oracle(settings, daq_dir, "scale", range(16))
        new_owner = owner_of(workers, f"{settings.spectra_topic}/0")
        assert new_owner != victim
        for k in workers.procs:  # the views, and the dashboard's feed, through either survivor
            through_k = reader_of(settings, k)
            again = fetch_run(through_k, "scale")
            assert np.array_equal(again["run_mean"], data["run_mean"])
            assert np.array_equal(again["file_mean"], data["file_mean"])
            poll = TableFeed(through_k).poll(PollRequest("scale", None, None, frozenset()))
            assert poll.ok, poll.error
            assert poll.run_doc["n_files"] == 16 and [f["file_index"] for f in poll.files] == list(range(16))
        # `quax export` with every machine's address (the dead one refuses: the next one answers)
        out = tmp_path / "scale.npz"
        export = subprocess.run([sys.executable, "-m", "quax_faust.tools.cli", "export", "--run", "scale",
                                 "--out", str(out)], env={**os.environ, **settings_env(settings)},
                                capture_output=True, text=True, timeout=120)
        assert export.returncode == 0, export.stdout + export.stderr
        with np.load(out) as exported:
            assert np.array_equal(exported["run_mean"], data["run_mean"])
            assert np.array_equal(exported["file_mean"], data["file_mean"])
        print(f"run tables moved from worker {victim} to worker {new_owner} ({settings.worker_url(new_owner)})")
    finally:
        workers.stop()


def test_eight_workers_on_eight_partitions_rebalance_without_loss(broker, tmp_path):
    """Four workers, then four more join while files flow (the last 4 files wait for the join):
    each of the eight ends with one slices partition, and the run equals the oracle."""
    daq_dir = write_synthetic_run(tmp_path / "daq", 16, N_SAMPLES, seed=8, tones=((-300_000.0, 0.1),))
    settings = stack_settings(broker, tmp_path / "var", workers=8, partitions=8, web_port_base=free_port(8),
                              web_hosts=loopback_hosts(8), slices_per_message=4)
    workers = Workers(settings, tmp_path / "logs")
    try:
        workers.start(range(4))  # in steps: eight workers starting at once on two cores take minutes
        wait_each_assigned(workers, timeout_s=180)
        first_rebalances = rebalances_done(settings, 0)
        release = threading.Event()
        producer = produce_held_back(settings, daq_dir, "eight", 16, 0.5, hold_last=4, release=release)
        wait_until(lambda: run_files(settings, "eight") >= 2, 120, "2 files folded")
        before = rebalances_done(settings, 0)
        workers.start(range(4, 8))
        wait_until(lambda: rebalances_done(settings, 0) > before, 180, "worker 0 rebalanced after 4 joined")
        folded = run_files(settings, "eight")
        print(f"4 workers joined at 2 files: rebalanced by {folded} of 16 files")
        assert folded < 16, "the rebalance came after the run was complete"
        wait_each_assigned(workers, timeout_s=240)
        held = {k: slices_partitions(workers, k) for k in workers.procs}
        assert sorted(len(tps) for tps in held.values()) == [1] * 8, held
        release.set()
        producer.join(120)
        assert not producer.errors, producer.errors
        wait_for_run(settings, "eight", 16, timeout_s=180)
        data = assert_run_matches_oracle(settings, daq_dir, "eight", range(16))  # each slice once
        assert int(data["n_slices_total"]) == 16 * SLICES_PER_FILE
        assert rebalances_done(settings, 0) - first_rebalances >= 1
        seen = {k: worker_metrics(settings, k) for k in workers.procs}
        counted = sum(m.get("quax_slices_total", 0) for m in seen.values())
        duplicates = sum(m.get("quax_duplicate_slices_total", 0) for m in seen.values())
        duplicate_files = sum(m.get("quax_duplicate_files_total", 0) for m in seen.values())
        # Slices re-read after the rebalance are counted as duplicates, never into the sums: every
        # slice counted at least once somewhere, and the run holds each exactly once (above).
        assert counted >= 16 * SLICES_PER_FILE
        summary = {r["run"]: r for r in get_json(settings, "/quax/runs/")["runs"]}["eight"]
        assert summary["n_slices"] == 16 * SLICES_PER_FILE and summary["n_files"] == 16
        print(f"8 workers / 8 partitions: slices counted {counted:.0f} of {16 * SLICES_PER_FILE}, duplicate slices "
              f"{duplicates:.0f}, duplicate files {duplicate_files:.0f} (run: {summary['duplicate_files']}), "
              f"offset re-reads {sum(m.get('quax_offset_rereads_total', 0) for m in seen.values()):.0f}")
    finally:
        workers.stop()


def test_a_worker_the_others_cannot_reach_is_named_by_the_views(broker, tmp_path):
    """Worker 1 advertises 127.0.0.3 but listens on 127.0.0.13 (a machine whose web host is wrong,
    or firewalled): worker 0 cannot forward to it and says so, naming it."""
    settings = stack_settings(broker, tmp_path / "var", workers=2, web_hosts=loopback_hosts(2),
                              web_port_base=free_port(2), route_timeout_s=2.0)
    unreachable = f"http://127.0.0.3:{settings.web_port_base + 1}"
    bad = Workers(settings.replace(web_bind="127.0.0.13"), tmp_path / "logs")
    good = Workers(settings, tmp_path / "logs")
    found = Workers(settings.replace(web_hosts="127.0.0.2,127.0.0.13"), tmp_path / "logs")  # where they listen
    try:
        bad.start([1])  # first, alone: it takes the run tables' partition and keeps it when worker 0 joins
        found.procs = dict(bad.procs)
        wait_each_assigned(found)
        good.start([0])
        found.procs = {**good.procs, **bad.procs}
        wait_each_assigned(found)
        assert found.health(1)["worker"].rstrip("/") == unreachable
        assert owner_of(found, f"{settings.spectra_topic}/0") == 1, "the unreachable worker holds the run tables"
        # Nothing listens at its address: refused, answered at once.
        status, doc = http_get(settings.worker_url(0) + "/quax/runs/")
        assert status == 502 and doc["unreachable_worker"] == unreachable, (status, doc)
        assert doc["error"].startswith(f"worker {unreachable} (owner of table runs"), doc
        with pytest.raises(TablesUnavailable) as failed:  # the reader's error names it too
            get_json(settings, "/quax/runs/")
        assert f"{unreachable}" in str(failed.value).split("\n", 2)[1], str(failed.value)
        # Something accepts connections there but never answers: 504 after route_timeout_s, no hang.
        with socket.socket() as silent:
            silent.bind(("127.0.0.3", settings.web_port_base + 1))
            silent.listen(8)
            started = time.monotonic()
            status, doc = http_get(settings.worker_url(0) + "/quax/runs/scale/")
            waited_s = time.monotonic() - started
        assert status == 504 and doc["unreachable_worker"] == unreachable, (status, doc)
        assert "no answer within 2 s" in doc["error"], doc
        assert settings.route_timeout_s <= waited_s < settings.route_timeout_s + 5, waited_s
        print(f"silent owner: {doc['error']!r} after {waited_s:.1f} s")
    finally:
        good.stop()
        bad.stop()


def test_web_hosts_give_each_worker_its_own_address():
    """No broker: web_hosts is one host per worker, in worker order; a missing entry is an error
    that says so, not a silent fall-back to web_host."""
    settings = Settings().replace(workers=3, web_hosts="127.0.0.2, 127.0.0.3,lab3.lab", web_port_base=7000)
    assert settings.worker_urls == ["http://127.0.0.2:7000", "http://127.0.0.3:7001", "http://lab3.lab:7002"]
    assert Settings().replace(workers=2).worker_urls == ["http://127.0.0.1:6066", "http://127.0.0.1:6067"]
    with pytest.raises(ValueError, match="web_hosts names 2 hosts .* none for worker 2"):
        Settings().replace(workers=3, web_hosts="a,b").worker_urls
