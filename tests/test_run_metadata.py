"""Run metadata through the chain (docs/usage.md, "Run metadata"): the workers keep each run's
record, the run's views use its own LO whatever the workers' settings, a contradicting record goes
to the dead-letter topic."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from quax_faust.core import run_meta
from quax_faust.ingest.producer import produce_directory
from quax_faust.tools.launch import wait_for_run
from tests.conftest import write_synthetic_run
from tests.kafka_io import read_topic, send_raw_async
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
    assert before == {"lo_a": (9.2e9, {"lo_frequency_hz": 9.2e9, "operator": "AR"}),
                      "lo_b": (9.3e9, {"lo_frequency_hz": 9.3e9, "b_field_t": 8.0})}
    file_doc = get_url(f"{settings.worker_url(1)}/quax/runs/lo_b/files/0/")
    assert file_doc["frequency_hz"][settings.slice_len // 2] == 9.3e9
    rejected = read_topic(settings.broker, f"{settings.slices_topic}.rejected")
    assert [dict(r.headers)["reason"] for r in rejected] == [b"metadata_conflict"]
    assert b"recorded lo_frequency_hz = 9200000000.0" in dict(rejected[0].headers)["error"]

    workers.stop()  # restarted with another LO setting: no run is relabelled
    workers.settings = settings.replace(lo_frequency_hz=5e9)
    workers.start()
    workers.wait_assigned()
    for run in records:
        wait_for_run(settings, run, 1)
    assert axes() == before
