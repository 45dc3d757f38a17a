"""The producer on a real broker: follow a live DAQ directory, resume from a checkpoint, quarantine."""

import asyncio
import threading
import time
from collections import Counter

import numpy as np
import pytest

from quax_faust import daq, synth, wire
from quax_faust.producer import produce_directory
from tests.conftest import stack_settings
from tests.kafka_io import read_topic

pytestmark = pytest.mark.broker
N = 3072 * 6 + 100  # 6 whole slices and a 100-sample tail


def sent_slices(settings) -> Counter:
    """(file_index, slice) -> times sent, read back from the slices topic."""
    counts = Counter()
    for record in read_topic(settings.broker, settings.slices_topic):
        b = wire.decode_slice_batch(record.value)
        for k in range(b.first_slice, b.first_slice + b.slice_count):
            counts[(b.file_index, k)] += 1
    return counts


def write_files(directory, indices):
    model = synth.SynthModel()
    for k in indices:
        daq.write_pair(directory, k, synth.synth_file(k, N, model))


def test_checkpoint_resumes_with_the_next_file(broker, tmp_path):
    settings = stack_settings(broker, tmp_path / "var", slices_per_message=4)
    write_files(tmp_path / "daq", range(3))
    first = asyncio.run(produce_directory(settings, tmp_path / "daq", "ck", "max", progress=False))
    assert first.files_sent == 3
    write_files(tmp_path / "daq", [3, 4])
    second = asyncio.run(produce_directory(settings, tmp_path / "daq", "ck", "max", progress=False))
    assert (second.files_sent, second.already_sent) == (2, 3)
    counts = sent_slices(settings)
    assert set(counts.values()) == {1}, "no file sent twice"
    assert sorted({f for f, _ in counts}) == [0, 1, 2, 3, 4]
    assert len(counts) == 5 * 6


def test_follow_sends_each_pair_once_it_is_complete(broker, tmp_path):
    settings = stack_settings(broker, tmp_path / "var", slices_per_message=4)
    live = tmp_path / "live"
    live.mkdir()
    result = {}

    def run():
        result["report"] = asyncio.run(produce_directory(
            settings, live, "fol", follow=True, idle_exit_s=6.0, settle_s=0.5, partner_timeout_s=2.0,
            progress=False))

    thread = threading.Thread(target=run)
    thread.start()
    x = synth.synth_file(0, N, synth.SynthModel())
    pair = daq.pair_paths(live, 0)
    # The DAQ writes the i file in two steps and the q file later: nothing may be sent before the end.
    x.real[: N // 2].astype("<f4").tofile(pair.i_path)
    time.sleep(1.0)
    with open(pair.i_path, "ab") as f:
        f.write(x.real[N // 2:].astype("<f4").tobytes())
    time.sleep(1.0)
    x.imag.astype("<f4").tofile(pair.q_path)
    time.sleep(1.5)
    write_files(live, [1])
    (live / "duck_i_00002.dat").write_bytes(np.zeros(N, "<f4").tobytes())  # its partner never comes
    bad = daq.write_pair(live, 3, synth.synth_file(3, N, synth.SynthModel()))
    with open(bad.q_path, "ab") as f:
        f.write(b"\0\0")  # odd size
    thread.join(60)
    assert not thread.is_alive()
    report = result["report"]
    assert report.files_sent == 2
    assert len(report.skipped) == 2
    counts = sent_slices(settings)
    assert set(counts.values()) == {1} and len(counts) == 2 * 6
    decoded = wire.decode_slice_batch(read_topic(settings.broker, settings.slices_topic)[0].value)
    np.testing.assert_array_equal(decoded.samples[0], x[:3072])  # the complete file, not half of it
    quarantine = live / "quarantine"
    assert sorted(p.name for p in quarantine.iterdir()) == [
        "duck_i_00002.dat", "duck_i_00002.reason.txt", "duck_i_00003.dat", "duck_i_00003.reason.txt",
        "duck_q_00003.dat"]
    assert "not a whole number of float32 samples" in (quarantine / "duck_i_00003.reason.txt").read_text()
    assert "no partner duck_q_00002.dat" in (quarantine / "duck_i_00002.reason.txt").read_text()


def test_static_run_quarantines_bad_pairs_and_goes_on(broker, tmp_path):
    settings = stack_settings(broker, tmp_path / "var")
    write_files(tmp_path / "daq", range(3))
    x = synth.synth_file(1, N, synth.SynthModel())
    y = x.imag.astype("<f4")
    y[10] = np.inf
    y.tofile(daq.pair_paths(tmp_path / "daq", 1).q_path)
    report = asyncio.run(produce_directory(settings, tmp_path / "daq", "bad", "max", progress=False))
    assert report.files_sent == 2
    assert report.skipped == ["duck_q_00001.dat: 1 non-finite samples, the first at sample 10 (byte 40)"]
    assert (tmp_path / "daq" / "quarantine" / "duck_q_00001.dat").exists()
