"""The live campaign's state without Kafka (quax_faust/campaign/state.py, snapshot.py): records
folded as the workers fold them, the campaign's runs chosen by pattern, the state saved and read
back exactly, a snapshot of other runs or a broken one refused."""

from __future__ import annotations

import numpy as np
import pytest

from quax_faust.campaign import snapshot
from quax_faust.campaign.state import CampaignState, Goal
from quax_faust.core import run_meta, wire
from quax_faust.core.accumulators import RunAccumulator
from quax_faust.search.run_excess import CampaignConfig

BINS, FS = 3072, 2e6


def spectrum_record(run: str, file_index: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    mean = rng.exponential(1e-9, BINS)
    spec = wire.FileSpectrum(run, file_index, 2730, 2048, FS, 1.0, 2.0, 3.0, mean, mean * 0.99)
    return wire.encode_file_spectrum(spec)


def metadata_record(run: str, **fields) -> bytes:
    return run_meta.encode(run, fields)


def fold_all(state: CampaignState, records: list[tuple[str, bytes]]) -> None:
    for offset, (run, value) in enumerate(records):
        state.fold_spectrum(offset, run.encode(), value)


def test_records_fold_as_the_workers_fold_them_each_file_once():
    records = [("step0", spectrum_record("step0", k, k)) for k in range(3)]
    state = CampaignState()
    fold_all(state, records + records[:1])  # a repeat: counted, not folded
    expected = RunAccumulator.for_spectrum(wire.decode_file_spectrum(records[0][1]))
    for _, value in records:
        expected.fold(wire.decode_file_spectrum(value))
    np.testing.assert_array_equal(state.runs["step0"].mean, expected.mean)
    assert state.files_folded == 3 and state.duplicate_files == 1 and state.next_offsets["spectra"] == 4


def test_only_the_campaigns_runs_are_folded_and_the_others_are_counted():
    state = CampaignState(runs_pattern="step*, calib-1")
    fold_all(state, [("step0", spectrum_record("step0", 0, 0)), ("test-9", spectrum_record("test-9", 0, 1)),
                     ("calib-1", spectrum_record("calib-1", 0, 2)), ("calib-2", spectrum_record("calib-2", 0, 3))])
    assert set(state.runs) == {"step0", "calib-1"} and state.other_runs == {"test-9", "calib-2"}
    assert state.record_metadata(0, b"test-9", metadata_record("test-9", lo_frequency_hz=1e10)) is None
    assert state.record_metadata(1, b"step0", metadata_record("step0", lo_frequency_hz=1e10)) == "step0"
    assert set(state.metadata) == {"step0"} and state.next_offsets["metadata"] == 2
    # a record whose key names a campaign run but whose content is another run's is not folded
    state.fold_spectrum(9, b"step1", spectrum_record("test-9", 1, 4))
    assert set(state.runs) == {"step0", "calib-1"}


def test_a_bad_record_is_rejected_and_counted_and_a_contradicting_metadata_record_too():
    state = CampaignState()
    assert state.fold_spectrum(0, b"r", b"not a spectrum") is None
    state.record_metadata(0, b"r", metadata_record("r", lo_frequency_hz=1e10))
    state.record_metadata(1, b"r", metadata_record("r", lo_frequency_hz=2e10))
    assert state.metadata["r"]["lo_frequency_hz"] == 1e10
    assert dict(state.rejected) == {("spectra", "truncated"): 1, ("metadata", "metadata_conflict"): 1}


def test_the_state_is_saved_and_read_back_exactly_for_the_same_runs_only(tmp_path):
    state = CampaignState(runs_pattern="step*")
    fold_all(state, [("step0", spectrum_record("step0", k, k)) for k in range(2)]
             + [("other", spectrum_record("other", 0, 9))])
    state.record_metadata(0, b"step0", metadata_record("step0", lo_frequency_hz=1.04e10, loaded_q=1e5))
    path = tmp_path / "state.bin"
    snapshot.save(state, path)
    back = snapshot.load(path, CampaignConfig(), Goal(), "step*")
    assert back is not None and back.changed == {"step0"}
    np.testing.assert_array_equal(back.runs["step0"].mean, state.runs["step0"].mean)
    np.testing.assert_array_equal(back.runs["step0"].m2, state.runs["step0"].m2)
    np.testing.assert_array_equal(back.runs["step0"].files.bounds(), state.runs["step0"].files.bounds())
    assert (back.metadata, back.next_offsets, back.other_runs, back.files_folded) == \
        (state.metadata, state.next_offsets, state.other_runs, state.files_folded)
    assert snapshot.load(path, CampaignConfig(), Goal(), "") is None  # saved for other runs: rebuild
    assert snapshot.load(tmp_path / "none.bin", CampaignConfig(), Goal()) is None
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(snapshot.SnapshotError, match="delete it to rebuild"):
        snapshot.load(path, CampaignConfig(), Goal(), "step*")
