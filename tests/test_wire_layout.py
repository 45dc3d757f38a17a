"""docs/wire-format.md, byte by byte: each field at the offset and in the type the tables give, read
here with struct.unpack_from at the documented offset (not with wire.py's own structs)."""

import struct

import numpy as np
import pytest

from quax_faust.core import wire
from quax_faust.core.accumulators import FileAccumulator, RunAccumulator

RUN = "run42"


def field(data: bytes, offset: int, fmt: str):
    return struct.unpack_from("<" + fmt, data, offset)[0]


def test_slice_batch_fields_sit_at_the_documented_offsets():
    rng = np.random.default_rng(0)
    samples = (rng.standard_normal((3, 16)) + 1j * rng.standard_normal((3, 16))).astype(np.complex64)
    data = wire.encode_slice_batch(wire.SliceBatch(RUN, 70_000, 5, 9, 11, 2e6, 1.7e9, samples, 1.69e9))
    assert data[0:4] == b"QXSB"
    assert [field(data, at, fmt) for at, fmt in (
        (4, "H"), (6, "H"), (8, "H"), (10, "H"), (12, "I"), (16, "I"), (20, "I"), (24, "I"), (28, "I"),
        (32, "I"), (36, "d"), (44, "d"), (52, "d"))] == [
        2, 60 + len(RUN), len(RUN), 1, 70_000, 5, 3, 9, 16, 11, 2e6, 1.7e9, 1.69e9]
    assert data[60:60 + len(RUN)] == RUN.encode()
    header_len = field(data, 6, "H")
    assert len(data) == header_len + 3 * 16 * 8  # slice_count x slice_len x 8 bytes
    body = np.frombuffer(data, "<f4", offset=header_len).reshape(3, 16, 2)  # float32 i, q interleaved
    np.testing.assert_array_equal(body[..., 0], samples.real)
    np.testing.assert_array_equal(body[..., 1], samples.imag)
    assert wire.file_key(RUN, 70_000) == b"run42/0000070000"


def test_file_spectrum_fields_sit_at_the_documented_offsets():
    mean, std = np.linspace(1, 2, 8), np.linspace(0.1, 0.2, 8)
    spec = wire.FileSpectrum(RUN, 12, 2730, 2048, 2e6, 10.0, 14.0, 14.5, mean, std, 9.5)
    data = wire.encode_file_spectrum(spec)
    assert data[0:4] == b"QXSP"
    assert [field(data, at, fmt) for at, fmt in (
        (4, "H"), (6, "H"), (8, "H"), (10, "H"), (12, "I"), (16, "I"), (20, "I"), (24, "I"), (28, "d"),
        (36, "d"), (44, "d"), (52, "d"), (60, "d"))] == [
        2, 68 + len(RUN), len(RUN), 0, 12, 2730, 8, 2048, 2e6, 10.0, 14.0, 14.5, 9.5]
    assert data[68:68 + len(RUN)] == RUN.encode()
    header_len = field(data, 6, "H")
    np.testing.assert_array_equal(np.frombuffer(data, "<f8", 8, header_len), mean)
    np.testing.assert_array_equal(np.frombuffer(data, "<f8", 8, header_len + 8 * 8), std)
    assert len(data) == header_len + 2 * 8 * 8


def test_what_is_not_bytes_is_rejected_as_not_bytes():
    for decode in (wire.decode_slice_batch, wire.decode_file_spectrum):
        with pytest.raises(wire.WireError) as info:
            decode("QXSB")
        assert info.value.reason == "not_bytes"


def test_table_values_carry_their_own_magic_and_version():
    samples = np.ones((2, 16), np.complex64)
    file_acc = FileAccumulator.for_batch(wire.SliceBatch(RUN, 3, 0, 2, 0, 2e6, 1.0, samples))
    run_acc = RunAccumulator.for_spectrum(wire.FileSpectrum(RUN, 3, 2, 0, 2e6, 1, 2, 3, np.ones(16), np.ones(16)))
    for acc, magic, version in ((file_acc, b"QXFA", 2), (run_acc, b"QXRA", 1)):
        value = acc.to_bytes()
        assert value[:4] == magic and field(value, 4, "H") == version
        newer = value[:4] + struct.pack("<H", version + 1) + value[6:]
        with pytest.raises(ValueError, match="version-1"):  # a version it does not know: refused
            type(acc).from_bytes(newer)
    # The file accumulator's version 2 adds acquired_at_s at the end of its (66-byte) header.
    file_acc.acquired_at_s = 1.25e9
    value = file_acc.to_bytes()
    assert field(value, 58, "d") == 1.25e9 and value[66:66 + len(RUN)] == RUN.encode()
