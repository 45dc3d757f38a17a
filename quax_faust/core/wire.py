"""Binary, versioned messages on the topics (docs/wire-format.md). No pickle, no JSON for samples.

Two record kinds, all integers and floats little-endian:

- ``SliceBatch`` on topic ``slices``: consecutive whole slices of one file, complex64 samples;
- ``FileSpectrum`` on topic ``spectra``: one finished file's mean and standard deviation per bin.

Encoders write version 2 (version 1 plus the file's acquisition time, ``acquired_at_s``); decoders
read versions 1 and 2 (a version-1 message's ``acquired_at_s`` is NaN: unknown).

``decode_*`` never trusts its input: anything malformed raises ``WireError`` whose ``reason`` is a
short machine-readable tag (used as a metric label) and whose message says what was expected.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

import numpy as np

from quax_faust.core.errors import QuaxError

SLICE_MAGIC = b"QXSB"
SPECTRUM_MAGIC = b"QXSP"
VERSION = 2
"""What the encoders write; the decoders also read version 1 (no acquisition time)."""
SAMPLE_FORMAT_COMPLEX64 = 1
"""Interleaved little-endian float32 pairs (i, q): numpy '<c8'."""

RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAX_SLICE_LEN = 1 << 20

# By version: magic, version, header_len, run_len, sample_format, file_index, first_slice,
# slice_count, slices_in_file, slice_len, tail_samples, sample_rate_hz, produced_at_s; v2: acquired_at_s
_SLICE_HEADS = {1: struct.Struct("<4sHHHHIIIIIIdd"), 2: struct.Struct("<4sHHHHIIIIIIddd")}
# By version: magic, version, header_len, run_len, reserved, file_index, n_slices, slice_len,
# tail_samples, sample_rate_hz, first_produced_at_s, last_produced_at_s, completed_at_s; v2: acquired_at_s
_SPECTRUM_HEADS = {1: struct.Struct("<4sHHHHIIIIdddd"), 2: struct.Struct("<4sHHHHIIIIddddd")}
UNKNOWN_TIME = float("nan")
"""``acquired_at_s`` of a file whose acquisition time is not known (a version-1 message)."""


class WireError(QuaxError):
    """A message that cannot be decoded; ``reason`` is a short tag such as 'bad_magic'."""


def check_run_id(run: str) -> str:
    """Return run if it is a valid run id (1-64 of A-Z a-z 0-9 _ . -, starting alphanumeric)."""
    if not isinstance(run, str) or not RUN_ID_PATTERN.fullmatch(run):
        raise ValueError(f"run id {run!r} must be 1-64 characters of A-Z a-z 0-9 _ . - "
                         "starting with a letter or digit")
    return run


def file_key(run: str, file_index: int) -> bytes:
    """Kafka key of a file's slice messages: all slices of one file land in one partition."""
    return f"{run}/{file_index:010d}".encode()


@dataclass(frozen=True)
class SliceBatch:
    """``slice_count`` consecutive whole slices of file ``file_index``, starting at ``first_slice``.

    samples: (slice_count, slice_len) complex64. ``slices_in_file`` whole slices make the file;
    ``tail_samples`` (< slice_len) samples at its end were dropped by the producer, as Welch does.
    ``produced_at_s`` is the producer's wall clock (Unix seconds) when it sent the message;
    ``acquired_at_s`` when the DAQ acquired the file (Unix seconds, ``daq.acquired_at_s``), NaN if
    unknown.
    """

    run: str
    file_index: int
    first_slice: int
    slices_in_file: int
    tail_samples: int
    sample_rate_hz: float
    produced_at_s: float
    samples: np.ndarray
    acquired_at_s: float = UNKNOWN_TIME

    @property
    def slice_count(self) -> int:
        return int(self.samples.shape[0])

    @property
    def slice_len(self) -> int:
        return int(self.samples.shape[1])

    @property
    def is_last(self) -> bool:
        return self.first_slice + self.slice_count == self.slices_in_file


def _slice_head(run: bytes, file_index: int, first_slice: int, slice_count: int, slices_in_file: int,
                slice_len: int, tail_samples: int, sample_rate_hz: float, produced_at_s: float,
                acquired_at_s: float) -> bytes:
    """A slice message's header (this version) followed by its run id; checks the slice range."""
    if slice_count <= 0 or slice_len <= 0:
        raise ValueError(f"samples must be (slice_count>0, slice_len>0), got ({slice_count}, {slice_len})")
    if first_slice + slice_count > slices_in_file:
        raise ValueError("first_slice + slice_count exceeds slices_in_file")
    layout = _SLICE_HEADS[VERSION]
    return layout.pack(SLICE_MAGIC, VERSION, layout.size + len(run), len(run), SAMPLE_FORMAT_COMPLEX64,
                       file_index, first_slice, slice_count, slices_in_file, slice_len, tail_samples,
                       sample_rate_hz, produced_at_s, _acquired(acquired_at_s, ValueError)) + run


def slice_batch_size(run: str, slice_count: int, slice_len: int) -> int:
    """Bytes of a slice message of ``slice_count`` slices of ``slice_len`` samples of run ``run``."""
    return _SLICE_HEADS[VERSION].size + len(run.encode()) + slice_count * slice_len * 8


def encode_slice_batch(batch: SliceBatch) -> bytes:
    run = check_run_id(batch.run).encode()
    samples = np.ascontiguousarray(batch.samples, dtype="<c8")
    if samples.ndim != 2:
        raise ValueError(f"samples must be (slice_count>0, slice_len>0), got {samples.shape}")
    head = _slice_head(run, batch.file_index, batch.first_slice, samples.shape[0], batch.slices_in_file,
                       samples.shape[1], batch.tail_samples, batch.sample_rate_hz, batch.produced_at_s,
                       batch.acquired_at_s)
    return b"".join((head, samples.data))


def encode_slice_channels(out: np.ndarray, run: str, file_index: int, first_slice: int, slices_in_file: int,
                          tail_samples: int, sample_rate_hz: float, produced_at_s: float, i: np.ndarray,
                          q: np.ndarray, slice_len: int, acquired_at_s: float = UNKNOWN_TIME) -> np.ndarray:
    """The slice message ``encode_slice_batch`` writes for the slices whose in-phase and quadrature
    samples are ``i`` and ``q`` (float32, shape (slice_count * slice_len,)), built in ``out`` (uint8,
    at least ``slice_batch_size`` bytes) with no complex copy in between: the samples are
    interleaved straight into the message. Returns the view of ``out`` that holds the message."""
    run_bytes = check_run_id(run).encode()
    slice_count, rest = divmod(i.shape[0], slice_len) if slice_len > 0 else (0, 0)
    if rest or q.shape != i.shape:
        raise ValueError(f"i and q must both hold whole slices of {slice_len} samples, got {i.shape} and {q.shape}")
    head = _slice_head(run_bytes, file_index, first_slice, slice_count, slices_in_file, slice_len,
                       tail_samples, sample_rate_hz, produced_at_s, acquired_at_s)
    size = len(head) + i.shape[0] * 8
    if out.dtype != np.uint8 or out.ndim != 1 or out.shape[0] < size:
        raise ValueError(f"out must be uint8 of at least {size} bytes, got {out.dtype} {out.shape}")
    message = out[:size]
    message[:len(head)] = np.frombuffer(head, dtype=np.uint8)
    interleave(i, q, out=message[len(head):].view("<f4").reshape(i.shape[0], 2))
    return message


INTERLEAVE_BLOCK = 1 << 16
"""Samples interleaved per step (512 KiB of complex64: a block stays in cache between its i and q writes)."""


def interleave(i: np.ndarray, q: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """The samples i + 1j*q in this format (complex64, shape (n,)) from i and q (float32, shape
    (n,)); written into ``out`` if given (complex64 of shape (n,), or float32 of shape (n, 2)).
    Block by block: writing all of i, then all of q would stream the whole output through memory
    twice."""
    n = i.shape[0]
    if q.shape != i.shape:
        raise ValueError(f"i and q must have the same shape, got {i.shape} and {q.shape}")
    if out is None:
        out = np.empty(n, dtype=np.complex64)
    parts = out.view(np.float32).reshape(n, 2)
    for start in range(0, n, INTERLEAVE_BLOCK):
        block = slice(start, start + INTERLEAVE_BLOCK)
        parts[block, 0] = i[block]
        parts[block, 1] = q[block]
    return out


def decode_slice_batch(data: bytes | memoryview) -> SliceBatch:
    """Decode and validate a slice message (version 1 or 2); samples are a read-only view into ``data``."""
    fixed, (magic, version, header_len, run_len, sample_format, file_index, first_slice, slice_count,
            slices_in_file, slice_len, tail_samples, sample_rate_hz, produced_at_s,
            *acquired) = _unpack_head(_SLICE_HEADS, SLICE_MAGIC, data)
    run = _check_header(header_len, run_len, fixed, data)
    if sample_format != SAMPLE_FORMAT_COMPLEX64:
        raise WireError("bad_sample_format", f"sample format {sample_format}, expected "
                        f"{SAMPLE_FORMAT_COMPLEX64} (complex64)")
    _check_slicing(slice_len, tail_samples, sample_rate_hz)
    if slice_count == 0:
        raise WireError("bad_slice_range", "slice_count is 0")
    if first_slice + slice_count > slices_in_file:
        raise WireError("bad_slice_range", f"slices {first_slice}..{first_slice + slice_count - 1}"
                        f" exceed the file's {slices_in_file} slices")
    expected = header_len + slice_count * slice_len * 8
    if len(data) != expected:
        raise WireError("bad_length", f"{len(data)} bytes, expected {expected} for {slice_count} "
                        f"slices of {slice_len} complex64 samples")
    if not np.isfinite(produced_at_s):
        raise WireError("bad_timestamp", "produced_at_s is not finite")
    acquired_at_s = _acquired(acquired[0], _bad_timestamp) if acquired else UNKNOWN_TIME
    samples = np.frombuffer(data, dtype="<c8", offset=header_len).reshape(slice_count, slice_len)
    return SliceBatch(run, file_index, first_slice, slices_in_file, tail_samples, sample_rate_hz,
                      produced_at_s, samples, acquired_at_s)


@dataclass(frozen=True)
class FileSpectrum:
    """A finished file: mean and sample std (ddof=1) of its periodograms, fftshifted, V**2/Hz.

    mean, std: (slice_len,) float64. Times are Unix seconds: the producer's clock on the file's first
    and last slice messages, the worker's clock when the spectrum was complete, and when the DAQ
    acquired the file (``acquired_at_s``, NaN if unknown).
    """

    run: str
    file_index: int
    n_slices: int
    tail_samples: int
    sample_rate_hz: float
    first_produced_at_s: float
    last_produced_at_s: float
    completed_at_s: float
    mean: np.ndarray
    std: np.ndarray
    acquired_at_s: float = UNKNOWN_TIME

    @property
    def slice_len(self) -> int:
        return int(self.mean.shape[0])

    @property
    def latency_s(self) -> float:
        """From the producer sending the file's last slice to the spectrum being complete."""
        return self.completed_at_s - self.last_produced_at_s


def encode_file_spectrum(spec: FileSpectrum) -> bytes:
    run = check_run_id(spec.run).encode()
    mean = np.ascontiguousarray(spec.mean, dtype="<f8")
    std = np.ascontiguousarray(spec.std, dtype="<f8")
    if mean.ndim != 1 or mean.shape != std.shape:
        raise ValueError(f"mean and std must be equal 1-D arrays, got {mean.shape} and {std.shape}")
    layout = _SPECTRUM_HEADS[VERSION]
    head = layout.pack(SPECTRUM_MAGIC, VERSION, layout.size + len(run), len(run), 0, spec.file_index,
                       spec.n_slices, mean.shape[0], spec.tail_samples, spec.sample_rate_hz,
                       spec.first_produced_at_s, spec.last_produced_at_s, spec.completed_at_s,
                       _acquired(spec.acquired_at_s, ValueError))
    return b"".join((head, run, mean.data, std.data))


def decode_file_spectrum(data: bytes | memoryview) -> FileSpectrum:
    """Decode and validate a spectra record (version 1 or 2); mean and std are read-only views."""
    fixed, (magic, version, header_len, run_len, _reserved, file_index, n_slices, slice_len,
            tail_samples, sample_rate_hz, first_at, last_at, completed_at,
            *acquired) = _unpack_head(_SPECTRUM_HEADS, SPECTRUM_MAGIC, data)
    run = _check_header(header_len, run_len, fixed, data)
    _check_slicing(slice_len, tail_samples, sample_rate_hz)
    if n_slices == 0:
        raise WireError("bad_slice_range", "n_slices is 0")
    expected = header_len + 2 * slice_len * 8
    if len(data) != expected:
        raise WireError("bad_length", f"{len(data)} bytes, expected {expected} for mean and std "
                        f"of {slice_len} bins")
    values = np.frombuffer(data, dtype="<f8", offset=header_len).reshape(2, slice_len)
    if not (np.isfinite(values).all() and (values >= 0).all()):
        raise WireError("bad_values", "mean and std must be finite and non-negative")
    for name, at in (("first_produced_at_s", first_at), ("last_produced_at_s", last_at),
                     ("completed_at_s", completed_at)):
        if not np.isfinite(at):
            raise WireError("bad_timestamp", f"{name} is not finite")
    acquired_at_s = _acquired(acquired[0], _bad_timestamp) if acquired else UNKNOWN_TIME
    return FileSpectrum(run, file_index, n_slices, tail_samples, sample_rate_hz, first_at, last_at,
                        completed_at, values[0], values[1], acquired_at_s)


def _unpack_head(heads: dict[int, struct.Struct], magic: bytes, data: bytes | memoryview) -> tuple[int, tuple]:
    """(size of the fixed header, its fields) of a message of one of the versions in heads."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise WireError("not_bytes", f"expected bytes, got {type(data).__name__}")
    shortest = min(head.size for head in heads.values())
    if len(data) < shortest:
        raise WireError("truncated", f"{len(data)} bytes, shorter than the {shortest}-byte header")
    found, version = struct.unpack_from("<4sH", data)
    if found != magic:
        raise WireError("bad_magic", f"magic {bytes(found)!r}, expected {magic!r}")
    head = heads.get(version)
    if head is None:
        known = " and ".join(str(v) for v in sorted(heads))
        raise WireError("bad_version", f"version {version}, this decoder reads versions {known}")
    if len(data) < head.size:
        raise WireError("truncated", f"{len(data)} bytes, shorter than the {head.size}-byte header "
                        f"of version {version}")
    return head.size, head.unpack_from(data)


def _acquired(at: float, error) -> float:
    """at if it is an acquisition time (NaN: unknown, or finite and >= 0); else error(message)."""
    if not (np.isnan(at) or (np.isfinite(at) and at >= 0)):
        raise error(f"acquired_at_s {at} is not a time (Unix seconds >= 0, or NaN: unknown)")
    return at


def _bad_timestamp(message: str) -> WireError:
    return WireError("bad_timestamp", message)


def _check_header(header_len: int, run_len: int, fixed: int, data) -> str:
    if header_len != fixed + run_len or len(data) < header_len:
        raise WireError("bad_header", f"header_len {header_len} with a {run_len}-byte run id "
                        f"(expected {fixed + run_len}) in a {len(data)}-byte message")
    try:
        return check_run_id(bytes(data[fixed:header_len]).decode("ascii"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise WireError("bad_run_id", str(exc)) from None


def _check_slicing(slice_len: int, tail_samples: int, sample_rate_hz: float) -> None:
    if not 0 < slice_len <= MAX_SLICE_LEN:
        raise WireError("bad_slice_len", f"slice_len {slice_len}, expected 1..{MAX_SLICE_LEN}")
    if tail_samples >= slice_len:
        raise WireError("bad_tail", f"tail of {tail_samples} samples is not shorter than a slice")
    if not (np.isfinite(sample_rate_hz) and sample_rate_hz > 0):
        raise WireError("bad_sample_rate", f"sample rate {sample_rate_hz} Hz")
