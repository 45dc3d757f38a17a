"""Wire format: round trips, and every kind of malformed message is rejected with a reason."""

import dataclasses
import math
import struct

import numpy as np
import pytest

from quax_faust.core import wire

L = 3072


def batch(**changes) -> wire.SliceBatch:
    rng = np.random.default_rng(0)
    samples = (rng.standard_normal((3, L)) + 1j * rng.standard_normal((3, L))).astype(np.complex64)
    fields = dict(run="run-1", file_index=70000, first_slice=6, slices_in_file=2730, tail_samples=2048,
                  sample_rate_hz=2e6, produced_at_s=1.7e9, samples=samples)
    fields.update(changes)
    return wire.SliceBatch(**fields)


def test_slice_batch_round_trip():
    b = batch(acquired_at_s=1.6e9 + 0.25)
    out = wire.decode_slice_batch(wire.encode_slice_batch(b))
    assert (out.run, out.file_index, out.first_slice, out.slices_in_file, out.tail_samples) == \
        ("run-1", 70000, 6, 2730, 2048)
    assert out.sample_rate_hz == 2e6 and out.produced_at_s == 1.7e9 and out.acquired_at_s == 1.6e9 + 0.25
    assert out.samples.dtype == np.complex64 and out.samples.shape == (3, L)
    np.testing.assert_array_equal(out.samples, b.samples)
    assert not out.is_last and batch(first_slice=2727).is_last


def test_an_unknown_acquisition_time_travels_as_nan():
    assert math.isnan(batch().acquired_at_s)  # not given: unknown
    assert math.isnan(wire.decode_slice_batch(wire.encode_slice_batch(batch())).acquired_at_s)
    assert wire.decode_slice_batch(wire.encode_slice_batch(batch(acquired_at_s=0.0))).acquired_at_s == 0.0


def v1_slice_message(b: wire.SliceBatch) -> bytes:
    """A version-1 message built by hand from docs/wire-format.md (no acquired_at_s; run at 52)."""
    run = b.run.encode()
    head = struct.pack("<4sHHHHIIIIIIdd", b"QXSB", 1, 52 + len(run), len(run), 1, b.file_index,
                       b.first_slice, b.slice_count, b.slices_in_file, b.slice_len, b.tail_samples,
                       b.sample_rate_hz, b.produced_at_s)
    return head + run + b.samples.astype("<c8").tobytes()


def v1_spectrum_record(spec: wire.FileSpectrum) -> bytes:
    """A version-1 spectra record built by hand (no acquired_at_s; run at 60)."""
    run = spec.run.encode()
    head = struct.pack("<4sHHHHIIIIdddd", b"QXSP", 1, 60 + len(run), len(run), 0, spec.file_index,
                       spec.n_slices, spec.slice_len, spec.tail_samples, spec.sample_rate_hz,
                       spec.first_produced_at_s, spec.last_produced_at_s, spec.completed_at_s)
    return head + run + np.asarray(spec.mean, "<f8").tobytes() + np.asarray(spec.std, "<f8").tobytes()


def test_version_1_slice_messages_still_decode_with_an_unknown_acquisition_time():
    b = batch()
    out = wire.decode_slice_batch(v1_slice_message(b))
    assert (out.run, out.file_index, out.first_slice, out.slices_in_file, out.tail_samples) == \
        ("run-1", 70000, 6, 2730, 2048)
    assert out.sample_rate_hz == 2e6 and out.produced_at_s == 1.7e9 and math.isnan(out.acquired_at_s)
    np.testing.assert_array_equal(out.samples, b.samples)
    # What this encoder writes is version 2: the same fields, the acquisition time, then the run id.
    assert wire.encode_slice_batch(b)[4:6] == b"\x02\x00"
    assert len(wire.encode_slice_batch(b)) == len(v1_slice_message(b)) + 8


def test_version_1_spectra_still_decode_with_an_unknown_acquisition_time():
    mean, std = np.linspace(1, 2, L), np.linspace(0.1, 0.2, L)
    out = wire.decode_file_spectrum(v1_spectrum_record(wire.FileSpectrum("r", 3, 2730, 2048, 2e6, 10.0, 12.0,
                                                                         12.5, mean, std)))
    assert (out.run, out.file_index, out.n_slices, out.tail_samples, out.latency_s) == ("r", 3, 2730, 2048, 0.5)
    np.testing.assert_array_equal(out.mean, mean)
    np.testing.assert_array_equal(out.std, std)
    assert math.isnan(out.acquired_at_s)


def test_version_1_messages_are_as_strict_as_ever():
    good = v1_slice_message(batch())
    for offset, fmt, value, expected in [(6, "<H", 60 + 5, "bad_header"),  # a v2 header_len in a v1 message
                                         (44, "<d", float("nan"), "bad_timestamp"),
                                         (32, "<I", 5000, "bad_tail")]:
        data = bytearray(good)
        struct.pack_into(fmt, data, offset, value)
        assert reason(bytes(data)) == expected
    assert reason(good[:-8]) == "bad_length" and reason(good[:51]) == "truncated"
    data = bytearray(good)
    data[52:55] = b"a/b"  # the run id sits at 52 in version 1
    assert reason(bytes(data)) == "bad_run_id"
    # A version-2 message relabelled version 1 (or the reverse) does not fit its header: refused.
    relabelled = bytearray(wire.encode_slice_batch(batch()))
    relabelled[4:6] = b"\x01\x00"
    assert reason(bytes(relabelled)) == "bad_header"
    relabelled = bytearray(good)
    relabelled[4:6] = b"\x02\x00"
    assert reason(bytes(relabelled)) == "bad_header"


def test_file_index_beyond_16_bits():
    # The original's 2-byte index wrapped after 65,535 files (~3 days at 4.2 s per file).
    for index in (65536, 2**32 - 1):
        assert wire.decode_slice_batch(wire.encode_slice_batch(batch(file_index=index))).file_index == index


def test_file_spectrum_round_trip():
    mean, std = np.linspace(1, 2, L), np.linspace(0.1, 0.2, L)
    spec = wire.FileSpectrum("r", 3, 2730, 2048, 2e6, 10.0, 12.0, 12.5, mean, std)
    out = wire.decode_file_spectrum(wire.encode_file_spectrum(spec))
    np.testing.assert_array_equal(out.mean, mean)
    np.testing.assert_array_equal(out.std, std)
    assert (out.run, out.file_index, out.n_slices, out.latency_s) == ("r", 3, 2730, 0.5)


def reason(data) -> str:
    with pytest.raises(wire.WireError) as info:
        wire.decode_slice_batch(data)
    return info.value.reason


def patched(offset: int, fmt: str, value) -> bytes:
    data = bytearray(wire.encode_slice_batch(batch()))
    struct.pack_into(fmt, data, offset, value)
    return bytes(data)


# Header offsets: magic 0, version 4, header_len 6, run_len 8, sample_format 10, file_index 12,
# first_slice 16, slice_count 20, slices_in_file 24, slice_len 28, tail 32, rate 36, produced_at 44,
# acquired_at 52 (version 2; version 1 ends at 52).
@pytest.mark.parametrize("data, expected", [
    (b"", "truncated"),
    (b"QXSB\x01\x00", "truncated"),
    (b"QXSB\x02\x00", "truncated"),
    (wire.encode_slice_batch(batch())[:56], "truncated"),  # longer than v1's header, not v2's
    (b"X" * 100, "bad_magic"),
    (patched(4, "<H", 3), "bad_version"),
    (patched(4, "<H", 0), "bad_version"),
    (patched(6, "<H", 40), "bad_header"),
    (patched(8, "<H", 200), "bad_header"),
    (patched(10, "<H", 9), "bad_sample_format"),
    (patched(20, "<I", 0), "bad_slice_range"),
    (patched(24, "<I", 7), "bad_slice_range"),
    (patched(28, "<I", 0), "bad_slice_len"),
    (patched(32, "<I", 5000), "bad_tail"),
    (patched(36, "<d", float("nan")), "bad_sample_rate"),
    (patched(36, "<d", -2e6), "bad_sample_rate"),
    (patched(44, "<d", float("inf")), "bad_timestamp"),
    (patched(52, "<d", float("inf")), "bad_timestamp"),
    (patched(52, "<d", float("-inf")), "bad_timestamp"),
    (patched(52, "<d", -1.0), "bad_timestamp"),
    (wire.encode_slice_batch(batch())[:-8], "bad_length"),
    (wire.encode_slice_batch(batch()) + b"\0", "bad_length"),
    (wire.encode_file_spectrum(wire.FileSpectrum("r", 0, 1, 0, 2e6, 0, 0, 0, np.ones(4), np.ones(4))), "bad_magic"),
])
def test_malformed_slice_messages_are_rejected_with_a_reason(data, expected):
    assert reason(data) == expected


def test_bad_run_id_in_message():
    data = bytearray(wire.encode_slice_batch(batch(run="abc")))
    data[60:63] = b"a/b"
    assert reason(bytes(data)) == "bad_run_id"
    data[60:63] = b"\xff\xfe\xfd"
    assert reason(bytes(data)) == "bad_run_id"


def test_encoder_refuses_what_the_decoder_would_reject():
    with pytest.raises(ValueError, match="run id"):
        wire.encode_slice_batch(batch(run="has space"))
    with pytest.raises(ValueError, match="exceeds"):
        wire.encode_slice_batch(batch(first_slice=2729))
    spec = wire.FileSpectrum("r", 0, 5, 0, 2e6, 0, 0, 0, np.ones(8), np.ones(8))
    for bad in (-1.0, float("inf"), float("-inf")):
        with pytest.raises(ValueError, match="acquired_at_s"):
            wire.encode_slice_batch(batch(acquired_at_s=bad))
        with pytest.raises(ValueError, match="acquired_at_s"):
            wire.encode_file_spectrum(dataclasses.replace(spec, acquired_at_s=bad))


def test_malformed_spectrum_messages():
    good = wire.encode_file_spectrum(wire.FileSpectrum("r", 0, 5, 0, 2e6, 0, 0, 0, np.ones(8), np.ones(8)))
    nan = wire.encode_file_spectrum(wire.FileSpectrum("r", 0, 5, 0, 2e6, 0, 0, 0, np.full(8, np.nan), np.ones(8)))
    acquired = bytearray(good)
    struct.pack_into("<d", acquired, 60, -5.0)  # acquired_at_s, version 2
    newer = bytearray(good)
    struct.pack_into("<H", newer, 4, 3)
    for data, expected in [(good[:-1], "bad_length"), (good[:30], "truncated"), (good[:64], "truncated"),
                           (nan, "bad_values"), (wire.encode_slice_batch(batch()), "bad_magic"),
                           (bytes(acquired), "bad_timestamp"), (bytes(newer), "bad_version")]:
        with pytest.raises(wire.WireError) as info:
            wire.decode_file_spectrum(data)
        assert info.value.reason == expected


def test_file_spectrum_carries_its_acquisition_time():
    spec = wire.FileSpectrum("r", 0, 5, 0, 2e6, 1.0, 2.0, 3.0, np.ones(8), np.ones(8), acquired_at_s=1.5e9)
    assert wire.decode_file_spectrum(wire.encode_file_spectrum(spec)).acquired_at_s == 1.5e9
    unknown = dataclasses.replace(spec, acquired_at_s=float("nan"))
    assert math.isnan(wire.decode_file_spectrum(wire.encode_file_spectrum(unknown)).acquired_at_s)


@pytest.mark.parametrize(("run", "count", "slice_len", "acquired"),
                         [("r", 1, 8, 1.7e9), ("run-2026.a_b", 5, 3072, math.nan), ("x" * 64, 3, 100, 0.0)])
def test_a_message_built_from_the_channels_is_the_one_the_batch_encoder_writes(run, count, slice_len, acquired):
    """The producer interleaves i and q straight into its message buffer (encode_slice_channels):
    byte for byte the message encode_slice_batch writes for the same slices, in a larger buffer."""
    rng = np.random.default_rng(count)
    i, q = (rng.standard_normal(count * slice_len).astype("<f4") for _ in range(2))
    samples = wire.interleave(i, q)
    np.testing.assert_array_equal(samples, i + 1j * q.astype(np.complex64))
    batch = wire.SliceBatch(run, 12, 3, 3 + count + 2, 7, 2e6, 1.7e9 + 0.25, samples.reshape(count, slice_len), acquired)
    expected = wire.encode_slice_batch(batch)
    assert wire.slice_batch_size(run, count, slice_len) == len(expected)
    out = np.full(len(expected) + 100, 0xAB, dtype=np.uint8)
    message = wire.encode_slice_channels(out, run, 12, 3, 3 + count + 2, 7, 2e6, 1.7e9 + 0.25, i, q,
                                         slice_len, acquired)
    assert message.nbytes == len(expected) and bytes(message) == expected
    assert (out[len(expected):] == 0xAB).all(), "nothing written past the message"


def test_the_channel_encoder_refuses_what_the_batch_encoder_refuses():
    i = q = np.zeros(2 * 8, dtype="<f4")
    out = np.empty(4096, dtype=np.uint8)
    args = ("run", 0, 0, 2, 0, 2e6, 1.0)
    with pytest.raises(ValueError, match="whole slices"):
        wire.encode_slice_channels(out, *args, i[:-1], q[:-1], 8)
    with pytest.raises(ValueError, match="whole slices"):
        wire.encode_slice_channels(out, *args, i, q[:8], 8)
    with pytest.raises(ValueError, match="exceeds slices_in_file"):
        wire.encode_slice_channels(out, "run", 0, 1, 2, 0, 2e6, 1.0, i, q, 8)
    with pytest.raises(ValueError, match="at least"):
        wire.encode_slice_channels(out[:100], *args, i, q, 8)
    with pytest.raises(ValueError, match="run id"):
        wire.encode_slice_channels(out, "bad run", 0, 0, 2, 0, 2e6, 1.0, i, q, 8)
