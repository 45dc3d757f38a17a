"""Fuzzing the decoders (hypothesis): no input crashes them; anything not rejected is self-consistent."""

import struct

import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st

from quax_faust.core import wire

GOOD = wire.encode_slice_batch(wire.SliceBatch(
    "fuzz", 3, 2, 10, 7, 2e6, 1.0, (np.arange(2 * 16) * (1 + 1j)).astype(np.complex64).reshape(2, 16)))
GOOD_SPECTRUM = wire.encode_file_spectrum(wire.FileSpectrum("fuzz", 1, 4, 0, 2e6, 0, 0, 0, np.ones(16), np.ones(16)))


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
    assert out.samples.nbytes + len(out.run) + 52 == len(data)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_random_bytes_never_crash(data):
    check_batch(decode_or_reject(wire.decode_slice_batch, data), data)
    decode_or_reject(wire.decode_file_spectrum, data)


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(GOOD) - 1), st.integers(0, 255)), min_size=1, max_size=6),
       st.integers(-70, 70))
def test_mutated_messages_never_crash(flips, cut):
    data = bytearray(GOOD)
    for pos, byte in flips:
        data[pos] = byte
    data = bytes(data[:cut] if cut < 0 else data + b"\0" * cut)
    check_batch(decode_or_reject(wire.decode_slice_batch, data), data)


@settings(max_examples=2000, deadline=None)
@given(st.integers(0, 13), st.integers(0, 2**32 - 1))
def test_every_header_field_at_any_value(field, value):
    offsets = [(4, "<H"), (6, "<H"), (8, "<H"), (10, "<H"), (12, "<I"), (16, "<I"), (20, "<I"),
               (24, "<I"), (28, "<I"), (32, "<I"), (36, "<d"), (44, "<d"), (36, "<Q"), (44, "<Q")]
    offset, fmt = offsets[field]
    data = bytearray(GOOD)
    if fmt == "<H":
        value &= 0xFFFF
    if fmt == "<d":
        value = struct.unpack("<d", struct.pack("<Q", value * 2654435761 % 2**64))[0]
    struct.pack_into(fmt, data, offset, value)
    check_batch(decode_or_reject(wire.decode_slice_batch, bytes(data)), bytes(data))


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(GOOD_SPECTRUM) - 1), st.integers(0, 255)), min_size=1, max_size=6))
def test_mutated_spectra_never_crash(flips):
    data = bytearray(GOOD_SPECTRUM)
    for pos, byte in flips:
        data[pos] = byte
    decode_or_reject(wire.decode_file_spectrum, bytes(data))
