"""The live candidate search on a real broker: a strong tone shows up in the view and on the topic.

A short synthetic run (6 files of 40 slices, a 0.1 V line at +250 kHz, LO at 10.4 GHz) through the
producer and two Faust workers; after each folded file the run average is searched.
"""

import asyncio
import json
import time
import types
import uuid

import numpy as np
import pytest

from quax_faust.tools import analyse_cmd

from quax_faust.core import daq, synth
from quax_faust.client import TablesUnavailable, get_json
from quax_faust.tools.launch import wait_for_run
from quax_faust.ingest.producer import produce_directory
from tests.kafka_io import read_topic

pytestmark = pytest.mark.broker

N_FILES, N_SAMPLES = 6, 3072 * 40
TONE_HZ, LO_HZ = 250_000.0, 10.4e9


def wait_for_search(settings, run: str, n_files: int, timeout_s: float = 60.0) -> dict:
    """The run's candidates document once the search after its n_files-th file is stored."""
    deadline = time.monotonic() + timeout_s
    doc: dict = {}
    while time.monotonic() < deadline:
        doc = get_json(settings, f"/quax/runs/{run}/candidates/")
        if doc["n_files"] >= n_files:
            return doc
        time.sleep(0.5)
    raise TimeoutError(f"no search after file {n_files} of {run} in {timeout_s} s; last: {doc}")


def test_strong_tone_shows_in_the_candidates_view_and_topic(make_stack, tmp_path, capsys):
    model = synth.SynthModel(tones=((TONE_HZ, 0.1),))
    for k in range(N_FILES):
        daq.write_pair(tmp_path / "daq", k, synth.synth_file(k, N_SAMPLES, model, seed=2))
    settings, _ = make_stack(workers=2, slices_per_message=16, lo_frequency_hz=LO_HZ,
                             candidates_topic=f"candidates-{uuid.uuid4().hex[:8]}")
    report = asyncio.run(produce_directory(settings, tmp_path / "daq", "tone", "max", progress=False))
    assert report.files_sent == N_FILES
    wait_for_run(settings, "tone", N_FILES)
    doc = wait_for_search(settings, "tone", N_FILES)

    assert doc["run"] == "tone" and doc["n_slices"] == N_FILES * 40
    assert doc["threshold_sigma"] == settings.candidate_threshold_sigma
    (cand,) = doc["candidates"]
    bin_hz = settings.bin_width_hz
    assert abs(cand["frequency_hz"] - (LO_HZ + TONE_HZ)) <= bin_hz
    assert cand["significance"] > doc["threshold_sigma"] and cand["above_threshold"]
    assert cand["persistent"]  # above threshold in all 6 searches (3 needed)
    assert cand["first_seen_file"] in range(N_FILES)
    assert cand["power"] == pytest.approx(0.1 ** 2, rel=0.15)  # A**2 for a bin-centred tone

    # The topic: one record per search, the first "new", the rest "updated", keyed by run.
    records = read_topic(settings.broker, settings.candidates_topic)
    published = [json.loads(r.value) for r in records]
    assert [r.key for r in records] == [b"tone"] * N_FILES
    assert [p["status"] for p in published] == ["new"] + ["updated"] * (N_FILES - 1)
    assert sorted(p["n_files"] for p in published) == list(range(1, N_FILES + 1))
    assert all(abs(p["frequency_hz"] - (LO_HZ + TONE_HZ)) <= bin_hz for p in published)

    with pytest.raises(TablesUnavailable, match="404"):
        get_json(settings, "/quax/runs/no-such-run/candidates/")

    # `quax analyse --run tone` reads the run from the live tables and replays the search.
    args = types.SimpleNamespace(run="tone", from_export=None, final_only=False, json=True)
    assert analyse_cmd.cmd_analyse(args, settings) == 0
    replayed = json.loads(capsys.readouterr().out)
    (again,) = replayed["candidates"]
    assert again["bin"] == cand["bin"] and again["frequency_hz"] == pytest.approx(cand["frequency_hz"])
    assert replayed["n_slices"] == doc["n_slices"]
    assert np.isclose(again["significance"], cand["significance"], rtol=1e-6)
