"""Run metadata through the chain (docs/usage.md, "Run metadata"): the workers keep each run's
record, the run's views use its own LO whatever the workers' settings, a contradicting record goes
to the dead-letter topic."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
import urllib.error
import urllib.request

import numpy as np
import pytest

from quax_faust.core import run_meta
from quax_faust.exports.load import load_run
from quax_faust.ingest.producer import produce_directory
from quax_faust.tools.launch import free_port, settings_env, wait_for_run
from tests.conftest import worker_log_tails, write_synthetic_run
from tests.kafka_io import read_topic, send_raw_async, wait_records
from tests.progress import wait_processed

pytestmark = pytest.mark.broker
N_SAMPLES = 4 * 3072


def get_url(url: str, timeout_s: float = 60.0) -> dict:
    """The view's JSON; a 503 (a worker still recovering its tables after a restart) is retried."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as answer:
                return json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            if exc.code != 503 or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_each_run_keeps_its_own_lo_whatever_the_workers_settings(make_stack, tmp_path):
    settings, workers = make_stack(workers=2, lo_frequency_hz=1e9)
    daq_dir = write_synthetic_run(tmp_path / "daq", 1, N_SAMPLES, seed=3)
    records = {"lo_a": {"lo_frequency_hz": 9.2e9, "operator": "AR"}, "lo_b": {"lo_frequency_hz": 9.3e9}}
    for run, fields in records.items():
        asyncio.run(send_raw_async(settings.broker, settings.metadata_topic, run.encode(),
                                   run_meta.encode(run, fields)))
        asyncio.run(produce_directory(settings, daq_dir, run, "max", progress=False))
        wait_for_run(settings, run, 1)
    # A record that grows a run is merged; one that contradicts it is a dead letter.
    asyncio.run(send_raw_async(settings.broker, settings.metadata_topic, b"lo_b",
                               run_meta.encode("lo_b", {"b_field_t": 8.0})))
    asyncio.run(send_raw_async(settings.broker, settings.metadata_topic, b"lo_a",
                               run_meta.encode("lo_a", {"lo_frequency_hz": 9.9e9})))
    wait_processed(settings)

    def axes() -> dict[str, tuple[float, dict]]:
        out = {}
        for run in records:
            doc = get_url(f"{settings.worker_url(0)}/quax/runs/{run}/")
            f = np.array(doc["frequency_hz"])
            out[run] = (float(f[len(f) // 2]), doc["metadata"])  # the bin at baseband 0 Hz
        return out

    before = axes()
    rate = {"sample_rate_hz": settings.sample_rate_hz}  # recorded by the producer
    assert before == {"lo_a": (9.2e9, {"lo_frequency_hz": 9.2e9, "operator": "AR", **rate}),
                      "lo_b": (9.3e9, {"lo_frequency_hz": 9.3e9, "b_field_t": 8.0, **rate})}
    file_doc = get_url(f"{settings.worker_url(1)}/quax/runs/lo_b/files/0/")
    assert file_doc["frequency_hz"][settings.slice_len // 2] == 9.3e9
    # Only the contradicting record is a dead letter. At least once: a rebalance between its
    # rejection and the commit of its offset replays it, so it may be there more than once (as in
    # test_reliability's dead-letter drill), always with that one source.
    conflicting = [r.offset for r in read_topic(settings.broker, settings.metadata_topic)
                   if r.key == b"lo_a" and run_meta.decode(r.value)[1].get("lo_frequency_hz") == 9.9e9]
    rejected = wait_records(settings.broker, f"{settings.slices_topic}.rejected", 1)
    seen = [(dict(r.headers)["source"], dict(r.headers)["reason"], dict(r.headers)["error"]) for r in rejected]
    assert {(s, reason) for s, reason, _ in seen} == \
        {(f"{settings.metadata_topic}/0/{conflicting[0]}".encode(), b"metadata_conflict")}, \
        f"{seen}\n{worker_log_tails(workers, marks=('rejected message', 'ebalanc', '[ERROR]'))}"
    assert all(b"recorded lo_frequency_hz = 9200000000.0" in error for *_, error in seen)

    workers.stop()  # restarted with another LO setting: no run is relabelled
    workers.settings = settings.replace(lo_frequency_hz=5e9)
    workers.start()
    workers.wait_assigned()
    for run in records:
        wait_for_run(settings, run, 1)
    assert axes() == before


def quax(settings, *args: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, **settings_env(settings), "QUAX_PRODUCER_METRICS_PORT": str(free_port(1))}
    return subprocess.run([str(Path(sys.executable).with_name("quax")), *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def count_records(settings) -> int:
    return len(read_topic(settings.broker, settings.slices_topic))


def sigmf_sidecar(path: Path, centre_hz: float, when: str) -> None:
    path.write_text(json.dumps({
        "global": {"core:datatype": "cf32_le", "core:sample_rate": 2e6, "core:version": "1.0.0"},
        "captures": [{"core:sample_start": 0, "core:frequency": centre_hz, "core:datetime": when}],
        "annotations": []}))


def test_quax_produce_records_the_metadata_and_refuses_a_conflict_before_sending(make_stack, tmp_path):
    settings, workers = make_stack(workers=2)
    daq_dir = write_synthetic_run(tmp_path / "daq", 1, N_SAMPLES, seed=4)
    (tmp_path / "run.toml").write_text('loaded_q = 1e5\nb_field_t = "8 T"\nnotes = "after the refill"\n')
    out = quax(settings, "produce", "--source", str(daq_dir), "--run", "m1", "--pace", "max",
               "--meta", "lo_frequency_hz=9.2 GHz", "--meta", "operator=AR", "--meta-file", "run.toml",
               cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    wait_for_run(settings, "m1", 1)
    doc = get_url(f"{settings.worker_url(0)}/quax/runs/m1/")
    assert doc["metadata"] == {"lo_frequency_hz": 9.2e9, "operator": "AR", "loaded_q": 1e5, "b_field_t": 8.0,
                               "notes": "after the refill", "sample_rate_hz": 2e6}
    assert doc["frequency_hz"][settings.slice_len // 2] == 9.2e9
    # The export describes the run with its own metadata.
    out = quax(settings, "export", "--run", "m1", "--out", "m1.h5", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    exported = load_run(tmp_path / "m1.h5")
    assert exported.metadata["run_metadata"] == doc["metadata"] and exported.metadata["lo_frequency_hz"] == 9.2e9
    assert exported.frequency_hz[settings.slice_len // 2] == 9.2e9
    sent = count_records(settings)

    # The run again with another LO: refused, showing the recorded one; nothing sent.
    out = quax(settings, "produce", "--source", str(daq_dir), "--run", "m1", "--pace", "max",
               "--no-checkpoint", "--lo-frequency-hz", "9.3e9", cwd=tmp_path)
    assert out.returncode == 3 and "recorded lo_frequency_hz = 9200000000.0" in out.stderr, out.stderr
    # A value of the wrong unit: refused before anything is sent.
    out = quax(settings, "produce", "--source", str(daq_dir), "--run", "m3", "--pace", "max",
               "--meta", "b_field_t=8 K", cwd=tmp_path)
    assert out.returncode == 3 and "b_field_t = '8 K': unit 'K', expected T" in out.stderr, out.stderr
    assert count_records(settings) == sent

    # A run without an LO given gets the producer's setting; a metadata-less worker setting is not it.
    out = quax(settings, "produce", "--source", str(daq_dir), "--run", "m4", "--pace", "max", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert wait_for_run(settings, "m4", 1) and get_url(
        f"{settings.worker_url(0)}/quax/runs/m4/")["metadata"]["lo_frequency_hz"] == settings.lo_frequency_hz


def test_sigmf_sidecars_give_the_lo_and_the_time_and_a_mismatch_is_quarantined(make_stack, tmp_path):
    settings, workers = make_stack(workers=2)
    daq_dir = write_synthetic_run(tmp_path / "daq", 3, N_SAMPLES, seed=5)
    sigmf_sidecar(daq_dir / "duck_00000.sigmf-meta", 9.4e9, "2026-11-30T01:00:00Z")
    sigmf_sidecar(daq_dir / "duck_00001.sigmf-meta", 9.4e9, "2026-11-30T01:00:04.194Z")
    sigmf_sidecar(daq_dir / "duck_00002.sigmf-meta", 9.5e9, "2026-11-30T01:00:08.389Z")  # another LO
    report = asyncio.run(produce_directory(settings, daq_dir, "sg", "max", progress=False))
    assert report.files_sent == 2 and len(report.skipped) == 1 and "sidecar" in report.skipped[0]
    assert (daq_dir / "quarantine" / "duck_i_00002.dat").exists()
    wait_for_run(settings, "sg", 2)
    doc = get_url(f"{settings.worker_url(0)}/quax/runs/sg/")
    assert doc["metadata"]["lo_frequency_hz"] == 9.4e9 and doc["frequency_hz"][settings.slice_len // 2] == 9.4e9
    first = get_url(f"{settings.worker_url(0)}/quax/runs/sg/files/0/")
    assert first["acquired_at_s"] == datetime(2026, 11, 30, 1, 0, 0, tzinfo=timezone.utc).timestamp()
