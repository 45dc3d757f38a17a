"""A file's acquisition time on a real broker: the pair's modification time (set here with os.utime)
-> the producer's slice messages -> the worker's files table -> the spectra topic -> the file views.
A producer from before acquisition times (version-1 messages, built here by hand) still makes its
file, shown as of unknown time (null)."""

import asyncio
import json
import os
import struct
import urllib.request

import numpy as np
import pytest

from quax_faust.core import daq, synth, wire
from quax_faust.ingest.producer import produce_directory
from quax_faust.tools.launch import wait_for_run
from tests.conftest import write_synthetic_run
from tests.kafka_io import read_topic, send_raw_async

pytestmark = pytest.mark.broker

RUN = "acq"
N_FILES, N_SAMPLES = 3, 3072 * 6 + 100  # 6 whole slices and a 100-sample tail per file
ACQUIRED = {0: 1_700_000_000.0, 1: 1_700_000_004.25, 2: 1_700_000_008.5}


def v1_slice_message(run: str, file_index: int, first: int, slices: np.ndarray, slices_in_file: int,
                     tail: int, sample_rate_hz: float) -> bytes:
    """A version-1 slice message, laid out as docs/wire-format.md gives it (no acquired_at_s)."""
    head = struct.pack("<4sHHHHIIIIIIdd", b"QXSB", 1, 52 + len(run), len(run), 1, file_index, first,
                       slices.shape[0], slices_in_file, slices.shape[1], tail, sample_rate_hz, 1.0)
    return head + run.encode() + slices.astype("<c8").tobytes()


def get_url(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.loads(answer.read())


def test_a_files_acquisition_time_reaches_its_file_view(make_stack, tmp_path):
    settings, _workers = make_stack(workers=1, slices_per_message=4)
    daq_dir = write_synthetic_run(tmp_path / "daq", N_FILES, N_SAMPLES, seed=3)
    for k, at in ACQUIRED.items():
        pair = daq.pair_paths(daq_dir, k)
        os.utime(pair.i_path, (at - 2.0, at - 2.0))
        os.utime(pair.q_path, (at, at))  # the DAQ finished the file with q: the later time counts
    report = asyncio.run(produce_directory(settings, daq_dir, RUN, "max", progress=False))
    assert report.files_sent == N_FILES and not report.skipped

    # File 3 from a producer of before: two version-1 messages.
    x = daq.whole_slices(synth.synth_file(3, N_SAMPLES, synth.SynthModel(), seed=3), settings.slice_len)
    tail = N_SAMPLES % settings.slice_len
    for first in (0, 4):
        value = v1_slice_message(RUN, 3, first, x[first:first + 4], x.shape[0], tail, settings.sample_rate_hz)
        asyncio.run(send_raw_async(settings.broker, settings.slices_topic, wire.file_key(RUN, 3), value))
    wait_for_run(settings, RUN, N_FILES + 1)

    # Every message of a file carries its time; the version-1 ones read as unknown.
    for record in read_topic(settings.broker, settings.slices_topic):
        batch = wire.decode_slice_batch(record.value)
        if batch.file_index in ACQUIRED:
            assert batch.acquired_at_s == ACQUIRED[batch.file_index]
        else:
            assert np.isnan(batch.acquired_at_s)
    spectra = {s.file_index: s for s in (wire.decode_file_spectrum(r.value)
                                         for r in read_topic(settings.broker, settings.spectra_topic))}
    assert {k: spectra[k].acquired_at_s for k in ACQUIRED} == ACQUIRED and np.isnan(spectra[3].acquired_at_s)

    base = settings.worker_url(0)
    page = get_url(base + f"/quax/runs/{RUN}/files/?start=0&limit=10")
    assert {f["file_index"]: f["acquired_at_s"] for f in page["files"]} == {**ACQUIRED, 3: None}
    assert get_url(base + f"/quax/runs/{RUN}/files/1/")["acquired_at_s"] == ACQUIRED[1]
    latest = get_url(base + f"/quax/runs/{RUN}/files/latest/")
    assert latest["file_index"] == 3 and latest["acquired_at_s"] is None and latest["n_slices"] == x.shape[0]
