"""DAQ files: pairing, every bad-input case named clearly, the tail rule, synthetic data."""

import math
import os
from pathlib import Path

import numpy as np
import pytest

from quax_faust.core import daq, synth

from quax_faust.ingest import feed
from quax_faust.settings import Settings

L = 3072


def write(tmp_path, index, n=L * 4 + 100, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(n) + 1j * rng.standard_normal(n)).astype(np.complex64)
    return daq.write_pair(tmp_path, index, x), x


def test_round_trip_is_exact_and_little_endian(tmp_path):
    pair, x = write(tmp_path, 12)
    assert pair.i_path.name == "duck_i_00012.dat" and pair.q_path.name == "duck_q_00012.dat"
    np.testing.assert_array_equal(np.fromfile(pair.i_path, "<f4"), x.real)
    np.testing.assert_array_equal(daq.read_pair(pair), x)


def test_scan_pairs_by_index_and_reports_missing_partner(tmp_path):
    for k in (0, 1, 3):
        write(tmp_path, k)
    daq.pair_paths(tmp_path, 1).q_path.unlink()
    (tmp_path / "notes.txt").write_text("ignored")
    pairs, problems = daq.scan_dir(tmp_path)
    assert [p.file_index for p in pairs] == [0, 3]
    assert len(problems) == 1 and problems[0].reason == "missing_partner"
    assert "duck_i_00001.dat" in str(problems[0]) and "duck_q_00001.dat" in str(problems[0])


def test_odd_size_names_the_file_and_the_byte_count(tmp_path):
    pair, _ = write(tmp_path, 2)
    with open(pair.q_path, "ab") as f:
        f.write(b"\x00\x00")
    with pytest.raises(daq.DaqError) as info:
        daq.read_pair(pair)
    assert info.value.reason == "odd_size"
    assert str(info.value) == f"duck_q_00002.dat: {(L * 4 + 100) * 4 + 2} bytes is not a whole number of float32 samples"


def test_length_mismatch(tmp_path):
    pair, _ = write(tmp_path, 4)
    with open(pair.q_path, "ab") as f:
        f.write(np.zeros(3, "<f4").tobytes())
    with pytest.raises(daq.DaqError, match="i and q must be equally long") as info:
        daq.check_pair(pair)
    assert info.value.reason == "length_mismatch"


def test_missing_file_and_empty_file(tmp_path):
    pair, _ = write(tmp_path, 5)
    pair.i_path.write_bytes(b"")
    with pytest.raises(daq.DaqError, match="empty"):
        daq.check_pair(pair)
    pair.i_path.unlink()
    with pytest.raises(daq.DaqError, match="does not exist"):
        daq.check_pair(pair)


def test_non_finite_samples_name_the_first_offset(tmp_path):
    pair, x = write(tmp_path, 6)
    bad = x.imag.astype("<f4")
    bad[777] = np.nan
    bad[900] = np.inf
    bad.tofile(pair.q_path)
    with pytest.raises(daq.DaqError) as info:
        daq.read_pair(pair)
    assert info.value.reason == "non_finite"
    assert "2 non-finite samples, the first at sample 777 (byte 3108)" in str(info.value)


def test_huge_finite_samples_are_not_taken_for_non_finite_ones(tmp_path):
    """The finite check sums each channel first; finite samples near float32's limit overflow that
    sum, and the exact scan must then clear them. +inf and -inf together (a NaN sum) are found."""
    pair, x = write(tmp_path, 9)
    huge = np.full(x.shape[0], 3.0e38, dtype="<f4")
    huge.tofile(pair.i_path)
    i, q = daq.read_channels(pair)
    np.testing.assert_array_equal(i, huge)
    np.testing.assert_array_equal(q, x.imag)
    huge[5], huge[6] = np.inf, -np.inf
    huge.tofile(pair.i_path)
    with pytest.raises(daq.DaqError, match="2 non-finite samples, the first at sample 5 "):
        daq.read_channels(pair)


def test_a_pair_shorter_than_one_slice_is_refused_with_its_reason(tmp_path):
    settings = Settings().replace(slice_len=L)
    pair, _ = write(tmp_path, 7, n=L - 1)
    assert daq.read_pair(pair).shape == (L - 1,)  # a valid pair as such ...
    with pytest.raises(daq.DaqError) as info:  # ... but not one slice to send: the producer refuses it
        feed._read_checked(pair, settings)
    assert info.value.reason == "too_short"
    assert str(info.value) == f"duck_i_00007.dat: {L - 1} samples, fewer than one slice of {L}"
    exactly_one, _ = write(tmp_path, 8, n=L)
    i, q = feed._read_checked(exactly_one, settings)
    assert i.shape == q.shape == (L,)


def test_a_pairs_acquisition_time_is_the_later_modification_time_of_its_files(tmp_path, caplog):
    pair, x = write(tmp_path, 4)
    os.utime(pair.i_path, (1_700_000_000.0, 1_700_000_000.0))
    os.utime(pair.q_path, (1_700_000_001.5, 1_700_000_001.5))  # the DAQ finished the file with q
    assert daq.acquired_at_s(pair) == 1_700_000_001.5
    read = feed._read_file(pair, Settings().replace(slice_len=L))  # what the producer sends it with
    assert read.acquired_at_s == 1_700_000_001.5
    np.testing.assert_array_equal(read.i, x.real)
    np.testing.assert_array_equal(read.q, x.imag)
    os.utime(pair.i_path, (-10.0, -10.0))
    os.utime(pair.q_path, (-5.0, -5.0))  # a DAQ whose clock was never set: unknown, and said so
    assert math.isnan(daq.acquired_at_s(pair))
    assert "before 1970" in caplog.text
    pair.q_path.unlink()
    with pytest.raises(daq.DaqError) as info:
        daq.acquired_at_s(pair)
    assert info.value.reason == "missing_partner" and "duck_q_00004.dat" in str(info.value)


def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        daq.scan_dir(tmp_path / "nope")


@pytest.mark.parametrize("n_samples, n_slices, tail", [
    (2**23, 2730, 2048),  # a real file
    (L * 5, 5, 0),
    (L - 1, 0, L - 1),
    (65536, 21, 1024),
])
def test_tail_rule(n_samples, n_slices, tail):
    layout = daq.SliceLayout(n_samples, L)
    assert (layout.n_slices, layout.tail_samples) == (n_slices, tail)
    x = np.arange(n_samples, dtype=np.complex64)
    sl = daq.whole_slices(x, L)
    assert sl.shape == (n_slices, L)
    if n_slices:
        assert sl[-1, -1] == n_slices * L - 1  # the tail is exactly what is left out


def test_synthetic_noise_has_a_non_flat_passband_and_the_injected_tone():
    model = synth.SynthModel(tones=((200 * 2e6 / L, 0.3),))
    x = synth.synth_file(0, L * 200, model, seed=1)
    assert x.dtype == np.complex64
    power = np.mean(np.abs(np.fft.fftshift(np.fft.fft(x.reshape(200, L), axis=1), axes=1)) ** 2, axis=0)
    freq = np.fft.fftshift(np.fft.fftfreq(L, 1 / 2e6))
    gain = synth.passband_power_gain(freq, model)
    in_band = np.abs(freq) < 0.8e6
    shape = power[in_band] / np.median(power[in_band])
    expected = gain[in_band] / np.median(gain[in_band])
    assert np.std(expected) > 0.05  # really not flat
    assert np.median(np.abs(shape - expected)) < 0.1
    assert freq[np.argmax(power)] == pytest.approx(200 * 2e6 / L)
    # reproducible from (seed, file index), different between files
    np.testing.assert_array_equal(x, synth.synth_file(0, L * 200, model, seed=1))
    assert not np.array_equal(x, synth.synth_file(1, L * 200, model, seed=1))


def test_synthetic_noise_is_1_v_rms_per_channel_before_a_passband_that_drifts_from_file_to_file(monkeypatch):
    n = 1 << 20
    model = synth.SynthModel()
    # Power of file 12 over file 0: the slow gain drift 1 + 0.02 sin(2 pi k / 50), +1.996 % here; the
    # scatter of the ratio of two means over 2^20 complex samples is 0.14 %.
    p0, p12 = (np.mean(np.abs(synth.synth_file(k, n, model, seed=3)) ** 2) for k in (0, 12))
    assert p12 / p0 == pytest.approx(1 + 0.02 * np.sin(2 * np.pi * 12 / 50), abs=0.005)
    monkeypatch.setattr(synth, "passband_power_gain", lambda freq, model: np.ones_like(freq))
    flat = synth.synth_file(0, n, synth.SynthModel(drift_fraction=0.0), seed=3)
    for channel in (flat.real, flat.imag):
        assert np.sqrt(np.mean(channel.astype(np.float64) ** 2)) == pytest.approx(1.0, abs=0.005)


def test_a_file_deleted_while_being_read_is_a_daq_error(tmp_path, monkeypatch):
    """A DAQ (or the demo's emulator) may delete a pair after it was listed: the producer gets a
    DaqError (quarantine, the run goes on), not a FileNotFoundError that stops it."""
    from quax_faust.core import daq as daq_module

    pair = daq_module.write_pair(tmp_path, 0, np.ones(4096, np.complex64))

    def open_after_deletion(path, *args, **kwargs):
        Path(path).unlink()
        return open(path, *args, **kwargs)

    monkeypatch.setattr(daq_module, "open", open_after_deletion, raising=False)  # the module's open()
    with pytest.raises(daq_module.DaqError, match="deleted while being read") as error:
        daq_module.read_pair(pair)
    assert error.value.reason == "missing_partner"
