"""Fuzzing the decoders (hypothesis): no input crashes them; anything not rejected is self-consistent."""

import math
import struct

import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st

from quax_faust.core import wire

GOOD = wire.encode_slice_batch(wire.SliceBatch(
    "fuzz", 3, 2, 10, 7, 2e6, 1.0, (np.arange(2 * 16) * (1 + 1j)).astype(np.complex64).reshape(2, 16),
    acquired_at_s=1.6e9))
GOOD_SPECTRUM = wire.encode_file_spectrum(wire.FileSpectrum("fuzz", 1, 4, 0, 2e6, 0, 0, 0, np.ones(16), np.ones(16),
                                                            acquired_at_s=1.6e9))
# Version 1 (no acquired_at_s), by hand as docs/wire-format.md gives it: still read.
GOOD_V1 = (struct.pack("<4sHHHHIIIIIIdd", b"QXSB", 1, 56, 4, 1, 3, 2, 2, 10, 16, 7, 2e6, 1.0) + b"fuzz"
           + (np.arange(2 * 16) * (1 + 1j)).astype("<c8").tobytes())
GOOD_SPECTRUM_V1 = (struct.pack("<4sHHHHIIIIdddd", b"QXSP", 1, 64, 4, 0, 1, 4, 16, 0, 2e6, 0, 0, 0) + b"fuzz"
                    + np.ones(32).tobytes())
FIXED_HEADER = {1: 52, 2: 60}  # bytes before the run id, by version


def decode_or_reject(decoder, data: bytes):
    try:
        return decoder(data)
    except wire.WireError as exc:
        assert exc.reason and str(exc)
        return None


def check_batch(out, data: bytes):
    if out is None:
        return
    assert wire.RUN_ID_PATTERN.fullmatch(out.run)
    assert out.slice_count >= 1 and out.first_slice + out.slice_count <= out.slices_in_file
    assert 0 <= out.tail_samples < out.slice_len
    version = struct.unpack_from("<H", data, 4)[0]
    assert out.samples.nbytes + len(out.run) + FIXED_HEADER[version] == len(data)
    check_acquired(out, version)


def check_acquired(out, version: int):
    """Version 1 knows no acquisition time (NaN); version 2's is NaN or a finite time >= 0."""
    assert math.isnan(out.acquired_at_s) if version == 1 else \
        (math.isnan(out.acquired_at_s) or (math.isfinite(out.acquired_at_s) and out.acquired_at_s >= 0))


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_random_bytes_never_crash(data):
    check_batch(decode_or_reject(wire.decode_slice_batch, data), data)
    decode_or_reject(wire.decode_file_spectrum, data)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([b"QXSB", b"QXSP"]), st.sampled_from([1, 2]), st.binary(max_size=400))
def test_random_bytes_after_a_good_magic_and_version_never_crash(magic, version, rest):
    data = magic + struct.pack("<H", version) + rest
    check_batch(decode_or_reject(wire.decode_slice_batch, data), data)
    spectrum = decode_or_reject(wire.decode_file_spectrum, data)
    if spectrum is not None:
        check_acquired(spectrum, version)


@settings(max_examples=3000, deadline=None)
@given(st.sampled_from([GOOD, GOOD_V1]), st.data(), st.integers(-70, 70))
def test_mutated_messages_never_crash(good, draws, cut):
    flips = draws.draw(st.lists(st.tuples(st.integers(0, len(good) - 1), st.integers(0, 255)), min_size=1,
                               max_size=6))
    data = bytearray(good)
    for pos, byte in flips:
        data[pos] = byte
    data = bytes(data[:cut] if cut < 0 else data + b"\0" * cut)
    check_batch(decode_or_reject(wire.decode_slice_batch, data), data)


@settings(max_examples=2000, deadline=None)
@given(st.sampled_from([GOOD, GOOD_V1]), st.integers(0, 15), st.integers(0, 2**32 - 1))
def test_every_header_field_at_any_value(good, field, value):
    offsets = [(4, "<H"), (6, "<H"), (8, "<H"), (10, "<H"), (12, "<I"), (16, "<I"), (20, "<I"),
               (24, "<I"), (28, "<I"), (32, "<I"), (36, "<d"), (44, "<d"), (36, "<Q"), (44, "<Q"),
               (52, "<d"), (52, "<Q")]  # acquired_at_s in version 2 (the run id in version 1)
    offset, fmt = offsets[field]
    data = bytearray(good)
    if fmt == "<H":
        value &= 0xFFFF
    if fmt == "<d":
        value = struct.unpack("<d", struct.pack("<Q", value * 2654435761 % 2**64))[0]
    struct.pack_into(fmt, data, offset, value)
    check_batch(decode_or_reject(wire.decode_slice_batch, bytes(data)), bytes(data))


@settings(max_examples=1000, deadline=None)
@given(st.sampled_from([GOOD_SPECTRUM, GOOD_SPECTRUM_V1]), st.data())
def test_mutated_spectra_never_crash(good, draws):
    flips = draws.draw(st.lists(st.tuples(st.integers(0, len(good) - 1), st.integers(0, 255)), min_size=1,
                               max_size=6))
    data = bytearray(good)
    for pos, byte in flips:
        data[pos] = byte
    out = decode_or_reject(wire.decode_file_spectrum, bytes(data))
    if out is not None:
        check_acquired(out, struct.unpack_from("<H", data, 4)[0])


def test_the_good_messages_decode():
    for good in (GOOD, GOOD_V1):
        check_batch(wire.decode_slice_batch(good), good)
    assert wire.decode_slice_batch(GOOD).acquired_at_s == 1.6e9
    assert math.isnan(wire.decode_file_spectrum(GOOD_SPECTRUM_V1).acquired_at_s)
    assert wire.decode_file_spectrum(GOOD_SPECTRUM).acquired_at_s == 1.6e9
