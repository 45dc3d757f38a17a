"""Table values: a slice or a file delivered twice is counted once; state survives serialisation."""

import struct

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from quax_faust.core import dsp, wire
from quax_faust.core.accumulators import COMPLETE, BatchFold, FileAccumulator, RunAccumulator, StateError
from quax_faust.core.index_set import IndexSet

L, FS = 256, 2e6


def file_slices(n=20, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, L)) + 1j * rng.standard_normal((n, L))).astype(np.complex64)


def deliver(acc, x, first, count, produced_at=1.0, acquired_at=float("nan")):
    b = wire.SliceBatch("r", 7, first, x.shape[0], 5, FS, produced_at, x[first:first + count], acquired_at)
    acc = acc or FileAccumulator.for_batch(b)
    new = acc.new_slices(b)
    acc.add(b, new, dsp.power_sums(b.samples, FS, counted=new) if new.any() else None)
    return FileAccumulator.from_bytes(acc.to_bytes())  # as the table stores it


def test_redelivered_and_overlapping_batches_count_each_slice_once():
    x = file_slices()
    acc = None
    for first, count in [(0, 8), (8, 8), (0, 8), (4, 9), (16, 4), (16, 4)]:
        acc = deliver(acc, x, first, count)
    assert acc.is_complete and acc.n_counted == 20
    assert acc.duplicate_slices == 8 + 9 + 4  # (0,8) again, (4,9) all seen, (16,4) again
    ref = dsp.power_sums(x, FS)
    # dsp sums each FFT block's squares in float32 (~1e-7); one slice counted twice would be 1/20 off.
    np.testing.assert_allclose(acc.power_sum, ref.power_sum, rtol=1e-6)
    np.testing.assert_allclose(acc.power_sumsq, ref.power_sumsq, rtol=1e-6)


def test_spectrum_and_completion():
    x = file_slices()
    acc = deliver(None, x, 0, 20, produced_at=5.0)
    spec = acc.spectrum(completed_at_s=5.25)
    mean, std = dsp.mean_and_std(acc.power_sum, acc.power_sumsq, 20)
    np.testing.assert_array_equal(spec.mean, mean)
    assert spec.latency_s == 0.25 and spec.n_slices == 20 and spec.tail_samples == 5
    acc.mark_complete()
    back = FileAccumulator.from_bytes(acc.to_bytes())
    assert back.status == COMPLETE and back.power_sum is None and back.n_counted == 20
    assert len(acc.to_bytes()) < 100  # finished files leave the hot state small


def batch(x, first, count):
    return wire.SliceBatch("r", 7, first, x.shape[0], 5, FS, 1.0, x[first:first + count])


def test_fold_counts_new_slices_with_the_power_sums_of_dsp():
    x = file_slices()
    acc = FileAccumulator.for_batch(batch(x, 0, 8))
    folded = acc.fold(batch(x, 0, 8), block_rows=3, threads=1)
    ref = dsp.power_sums(x[0:8], FS, block_rows=3)
    np.testing.assert_array_equal(acc.power_sum, ref.power_sum)
    np.testing.assert_array_equal(acc.power_sumsq, ref.power_sumsq)
    assert (folded.n_new_slices, folded.n_duplicate_slices) == (8, 0)
    assert folded.sample_bytes == x[0:8].nbytes and folded.data_seconds == 8 * L / FS
    assert folded.fft_seconds > 0
    assert acc.n_counted == 8 and acc.counted[:8].all() and not acc.counted[8:].any()


def test_fold_of_an_overlapping_repeat_adds_only_the_new_slices():
    x = file_slices()
    acc = FileAccumulator.for_batch(batch(x, 0, 8))
    acc.fold(batch(x, 0, 8), block_rows=64, threads=1)
    first = acc.power_sum.copy(), acc.power_sumsq.copy()
    folded = acc.fold(batch(x, 4, 8), block_rows=64, threads=1)  # slices 4..7 again, 8..11 new
    assert (folded.n_new_slices, folded.n_duplicate_slices) == (4, 4)
    assert folded.sample_bytes == x[4:12].nbytes  # the whole batch went through the FFT
    assert folded.data_seconds == 4 * L / FS
    ref = dsp.power_sums(x[8:12], FS)
    np.testing.assert_allclose(acc.power_sum, first[0] + ref.power_sum, rtol=1e-12)
    np.testing.assert_allclose(acc.power_sumsq, first[1] + ref.power_sumsq, rtol=1e-12)
    assert acc.n_counted == 12 and acc.duplicate_slices == 4

    stored = acc.to_bytes()
    again = acc.fold(batch(x, 4, 8), block_rows=64, threads=1)  # nothing new: no FFT
    assert again == BatchFold(0, 8, 0.0, 0, 0.0)
    assert acc.duplicate_slices == 12 and acc.n_counted == 12
    np.testing.assert_array_equal(acc.power_sum, FileAccumulator.from_bytes(stored).power_sum)


def test_fold_into_a_complete_file_counts_the_batch_as_repeats_and_changes_nothing():
    x = file_slices()
    acc = FileAccumulator.for_batch(batch(x, 0, 20))
    assert acc.fold(batch(x, 0, 20), block_rows=64, threads=1).n_new_slices == 20
    assert acc.is_complete
    acc.spectrum(completed_at_s=2.0)
    acc.mark_complete()
    acc = FileAccumulator.from_bytes(acc.to_bytes())
    stored = acc.to_bytes()
    assert acc.fold(batch(x, 12, 8), block_rows=64, threads=1) == BatchFold(0, 8, 0.0, 0, 0.0)
    assert acc.to_bytes() == stored


def test_inconsistent_batch_is_refused():
    x = file_slices()
    acc = deliver(None, x, 0, 4)
    other = wire.SliceBatch("r", 7, 4, 21, 5, FS, 1.0, x[4:8])
    with pytest.raises(StateError) as info:
        acc.new_slices(other)
    assert info.value.reason == "inconsistent_file"


def spectrum(index, n, seed):
    rng = np.random.default_rng(seed)
    p = rng.exponential(size=(n, L))
    return wire.FileSpectrum("r", index, n, 5, FS, 0, 0, float(index), p.mean(0), p.std(0, ddof=1)), p


def test_run_average_is_the_mean_over_all_slices_and_repeats_are_ignored():
    run, rows = None, []
    for index, n in [(0, 10), (1, 7), (2, 12), (1, 7), (5, 3)]:
        spec, p = spectrum(index, n, seed=index)
        run = run or RunAccumulator.for_spectrum(spec)
        if run.fold(spec):
            rows.append(p)
        run = RunAccumulator.from_bytes(run.to_bytes())
    allp = np.vstack(rows)
    assert run.n_files == 4 and run.n_slices == 32 and run.duplicate_files == 1
    assert list(run.files) == [0, 1, 2, 5] and run.latest_file_index == 5
    np.testing.assert_allclose(run.mean, allp.mean(0), rtol=1e-12)
    np.testing.assert_allclose(run.sem, allp.std(0, ddof=1) / np.sqrt(32), rtol=1e-10)
    assert run.tail_samples_total == 20


def test_run_scatter_is_that_of_all_slices_and_unknown_from_one():
    p = np.random.default_rng(0).exponential(size=(1, L))
    spec = wire.FileSpectrum("r", 0, 1, 5, FS, 0, 0, 0.0, p[0], np.zeros(L))  # a file's std for one slice
    run = RunAccumulator.for_spectrum(spec)
    run.fold(spec)
    assert np.isnan(run.std).all() and np.isnan(run.sem).all()  # the views show null
    rows = [p]
    for index, n in [(1, 9), (2, 4)]:
        spec, p = spectrum(index, n, seed=index)
        run.fold(spec)
        rows.append(p)
    allp = np.vstack(rows)
    np.testing.assert_allclose(run.std, allp.std(0, ddof=1), rtol=1e-10)
    np.testing.assert_allclose(run.sem, run.std / np.sqrt(14), rtol=1e-12)


def test_run_refuses_another_slice_length():
    spec, _ = spectrum(0, 4, 0)
    run = RunAccumulator.for_spectrum(spec)
    other = wire.FileSpectrum("r", 1, 4, 0, FS, 0, 0, 0, np.ones(L // 2), np.ones(L // 2))
    with pytest.raises(StateError):
        run.fold(other)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 300), max_size=120))
def test_index_set_behaves_like_a_set(values):
    s, ref = IndexSet(), set()
    for v in values:
        assert s.add(v) == (v not in ref)
        ref.add(v)
    assert sorted(ref) == list(s) and len(s) == len(ref)
    back = IndexSet(s.bounds())
    assert list(back) == sorted(ref)
    assert all((v in back) == (v in ref) for v in range(-1, 302))


def test_non_finite_samples_are_refused_and_change_nothing():
    x = file_slices()
    acc = deliver(None, x, 0, 4)
    before = acc.to_bytes()
    x[5, 17] = np.nan
    b = wire.SliceBatch("r", 7, 4, 20, 5, FS, 1.0, x[4:8])
    new = acc.new_slices(b)
    with pytest.raises(StateError) as info:
        acc.add(b, new, dsp.power_sums(b.samples, FS, counted=new))
    assert info.value.reason == "non_finite_samples"
    assert acc.to_bytes() == before


# ------------------------------------------------------------------------------------------------
# A stored value that cannot be read is a StateError "bad_table_value" (the agents dead-letter the
# message that needed it), never a bare struct.error, numpy error or UnicodeDecodeError.

def stored_values() -> dict[str, bytes]:
    x = file_slices(24)  # a whole number of bitmap bytes: no padding bits (a reader ignores those)
    filling = deliver(None, x, 0, 8, acquired_at=1.6e9)
    complete = deliver(None, x, 0, 24, acquired_at=1.6e9)
    complete.mark_complete()
    run = None
    for index, n in [(0, 10), (1, 7), (3, 12)]:
        spec, _ = spectrum(index, n, seed=index)
        run = run or RunAccumulator.for_spectrum(spec)
        run.fold(spec)
    return {"filling": filling.to_bytes(), "complete": complete.to_bytes(), "run": run.to_bytes()}


STORED = stored_values()
READ = {"filling": FileAccumulator.from_bytes, "complete": FileAccumulator.from_bytes,
        "run": RunAccumulator.from_bytes}


def assert_bad_table_value(kind: str, data: bytes) -> StateError:
    with pytest.raises(StateError) as info:
        READ[kind](data)
    assert info.value.reason == "bad_table_value"
    return info.value


@pytest.mark.parametrize("kind", sorted(STORED))
def test_stored_values_read_back_exactly(kind):
    assert READ[kind](STORED[kind]).to_bytes() == STORED[kind]


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(STORED)), st.data())
def test_a_truncated_or_extended_value_is_a_bad_table_value(kind, data):
    value = STORED[kind]
    cut = data.draw(st.integers(0, len(value) - 1))
    error = assert_bad_table_value(kind, value[:cut])
    assert ("files" if kind != "run" else "runs") + " table value" in str(error)
    assert_bad_table_value(kind, value + data.draw(st.binary(min_size=1, max_size=40)))


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(sorted(STORED)), st.data())
def test_a_garbled_value_reads_or_is_a_bad_table_value(kind, data):
    value = bytearray(STORED[kind])
    for _ in range(data.draw(st.integers(1, 4))):
        # mostly the header, where a flipped bit changes a size, the magic or the run id
        at = data.draw(st.integers(0, min(len(value), 100) - 1) | st.integers(0, len(value) - 1))
        value[at] ^= data.draw(st.integers(1, 255))
    try:
        acc = READ[kind](bytes(value))
    except StateError as exc:
        assert exc.reason == "bad_table_value"
    else:  # a changed number that still makes a whole value: it reads, and writes back as it came
        assert acc.to_bytes() == bytes(value)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_read_or_are_a_bad_table_value(value):
    for read in (FileAccumulator.from_bytes, RunAccumulator.from_bytes):
        try:
            read(value)
        except StateError as exc:
            assert exc.reason == "bad_table_value"


def test_what_a_bad_table_value_message_says():
    value = STORED["filling"]
    assert "version 3" in str(assert_bad_table_value("filling", value[:4] + b"\x03\x00" + value[6:]))
    assert "b'QXRA'" in str(assert_bad_table_value("filling", STORED["run"]))  # a run value as a file's
    assert "expected" in str(assert_bad_table_value("run", STORED["run"][:-8]))
    assert "version 2" in str(assert_bad_table_value("filling", value[:60]))  # its header cut short
    head = 66  # the file accumulator's version-2 header, then the run id "r"
    assert "not UTF-8" in str(assert_bad_table_value("filling", value[:head] + b"\xff" + value[head + 1:]))
    sums_at = len(value) - 2 * 8 * L
    nan = value[:sums_at] + np.float64(np.nan).tobytes() + value[sums_at + 8:]
    assert "'r' file 7" in str(assert_bad_table_value("filling", nan))


def test_a_files_acquisition_time_is_the_earliest_known_of_its_counted_batches():
    x = file_slices()
    acc = deliver(None, x, 0, 4)  # a batch of a producer that knew no time (a version-1 message)
    assert np.isnan(acc.acquired_at_s)
    acc = deliver(acc, x, 4, 4, acquired_at=1_700_000_050.0)
    acc = deliver(acc, x, 8, 4, acquired_at=1_700_000_000.5)  # the file re-sent after a change of time
    acc = deliver(acc, x, 8, 4, acquired_at=1.0)  # nothing new in it: changes nothing
    acc = deliver(acc, x, 12, 8)
    assert acc.is_complete and acc.acquired_at_s == 1_700_000_000.5
    spec = acc.spectrum(completed_at_s=2e9)
    assert spec.acquired_at_s == 1_700_000_000.5
    assert wire.decode_file_spectrum(wire.encode_file_spectrum(spec)).acquired_at_s == 1_700_000_000.5
    acc.mark_complete()
    assert FileAccumulator.from_bytes(acc.to_bytes()).acquired_at_s == 1_700_000_000.5  # kept when complete


def v1_file_value(acc: FileAccumulator) -> bytes:
    """The value as quax-stream stored it before acquisition times: version 1, a 58-byte header."""
    run = acc.run.encode()
    head = struct.pack("<4sHHHIIIIIIddd", b"QXFA", 1, acc.status, len(run), acc.file_index, acc.slices_in_file,
                       acc.slice_len, acc.tail_samples, acc.n_counted, acc.duplicate_slices, acc.sample_rate_hz,
                       acc.first_produced_at_s, acc.last_produced_at_s)
    sums = b"" if acc.power_sum is None else acc.power_sum.tobytes() + acc.power_sumsq.tobytes()
    return head + run + np.packbits(acc.counted).tobytes() + sums


@pytest.mark.parametrize("kind", ["filling", "complete"])
def test_a_version_1_files_value_still_reads_its_acquisition_time_unknown(kind):
    acc = FileAccumulator.from_bytes(STORED[kind])
    old = v1_file_value(acc)
    assert len(old) == len(STORED[kind]) - 8
    back = FileAccumulator.from_bytes(old)
    assert np.isnan(back.acquired_at_s)
    back.acquired_at_s = acc.acquired_at_s
    assert back.to_bytes() == STORED[kind]  # everything else as stored; written back as version 2
    assert FileAccumulator.from_bytes(old).to_bytes()[4:6] == b"\x02\x00"
    for cut in (len(old) - 1, 57, 10):
        assert "files table value" in str(assert_bad_table_value(kind, old[:cut]))
    assert_bad_table_value(kind, old + b"\0")


def test_a_filling_version_1_value_goes_on_counting():
    x = file_slices(24)
    old = v1_file_value(deliver(None, x, 0, 8))
    acc = deliver(FileAccumulator.from_bytes(old), x, 8, 16, acquired_at=1.6e9)
    assert acc.is_complete and acc.acquired_at_s == 1.6e9
    np.testing.assert_allclose(acc.power_sum, dsp.power_sums(x, FS).power_sum, rtol=1e-6)


@pytest.mark.parametrize("bad", [-1.0, float("inf"), float("-inf")])
def test_a_stored_acquisition_time_that_is_no_time_is_a_bad_table_value(bad):
    value = bytearray(STORED["complete"])
    struct.pack_into("<d", value, 58, bad)  # acquired_at_s ends the version-2 header
    assert "acquired_at_s" in str(assert_bad_table_value("complete", bytes(value)))
