"""The DAQ's files: find, validate, read and write ``duck_i_NNNNN.dat`` / ``duck_q_NNNNN.dat`` pairs.

A pair holds one file of the detector: raw little-endian float32, no header, i = real part and
q = imaginary part, paired by the zero-padded index NNNNN. Real files are 2**23 samples (4.194 s at
2 MS/s); any length is accepted. A file is cut into whole slices of ``slice_len`` samples; the
``tail`` (n_samples mod slice_len, 2048 samples for real files) is dropped exactly as Welch drops an
incomplete last segment, and counted (docs/architecture.md, "The tail rule").
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from quax_faust.core import run_meta, wire

log = logging.getLogger(__name__)

FILE_PATTERN = re.compile(r"duck_([iq])_(\d{5,10})\.dat")
SAMPLE_BYTES = 4  # float32


class DaqError(ValueError):
    """A bad DAQ file: ``path`` names it and ``reason`` is a short tag ('missing_partner', ...)."""

    def __init__(self, reason: str, path: Path | str, message: str):
        super().__init__(f"{Path(path).name}: {message}")
        self.reason = reason
        self.path = Path(path)


@dataclass(frozen=True)
class FilePair:
    file_index: int
    i_path: Path
    q_path: Path


@dataclass(frozen=True)
class SliceLayout:
    """How a file of n_samples cuts into whole slices of slice_len samples plus a dropped tail."""

    n_samples: int
    slice_len: int

    @property
    def n_slices(self) -> int:
        return self.n_samples // self.slice_len

    @property
    def tail_samples(self) -> int:
        return self.n_samples % self.slice_len


def pair_paths(directory: Path, file_index: int) -> FilePair:
    directory = Path(directory)
    return FilePair(file_index, directory / f"duck_i_{file_index:05d}.dat",
                    directory / f"duck_q_{file_index:05d}.dat")


def scan_dir(directory: Path | str) -> tuple[list[FilePair], list[DaqError]]:
    """Pairs found in directory, by file index, and the problems (a file without its partner).

    Files that do not match duck_[iq]_NNNNN.dat are ignored.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"DAQ directory {directory} does not exist")
    found: dict[int, dict[str, Path]] = {}
    for path in directory.iterdir():
        match = FILE_PATTERN.fullmatch(path.name)
        if match and path.is_file():
            found.setdefault(int(match.group(2)), {})[match.group(1)] = path
    pairs, problems = [], []
    for index in sorted(found):
        channels = found[index]
        if set(channels) == {"i", "q"}:
            pairs.append(FilePair(index, channels["i"], channels["q"]))
        else:
            have, missing = next(iter(channels.items()))[0], "q" if "i" in channels else "i"
            problems.append(DaqError("missing_partner", channels[have],
                                     f"no partner duck_{missing}_{index:05d}.dat in {directory}"))
    return pairs, problems


def check_pair(pair: FilePair) -> int:
    """Validate sizes without reading samples; return the number of samples per channel."""
    sizes = {}
    for path in (pair.i_path, pair.q_path):
        if not path.is_file():
            raise DaqError("missing_partner", path, "file does not exist")
        size = path.stat().st_size
        if size % SAMPLE_BYTES:
            raise DaqError("odd_size", path, f"{size} bytes is not a whole number of float32 samples")
        if size == 0:
            raise DaqError("empty", path, "file is empty")
        sizes[path] = size // SAMPLE_BYTES
    n_i, n_q = sizes[pair.i_path], sizes[pair.q_path]
    if n_i != n_q:
        raise DaqError("length_mismatch", pair.q_path,
                       f"{n_q} samples but {pair.i_path.name} has {n_i}; i and q must be equally long")
    return n_i


def read_channels(pair: FilePair) -> tuple[np.ndarray, np.ndarray]:
    """The file's in-phase and quadrature samples (i, q), float32, each of shape (n_samples,).

    Raises DaqError for bad sizes, i/q length mismatch or non-finite (NaN/Inf) samples, naming the
    file and the first bad sample offset.
    """
    n_samples = check_pair(pair)
    return _read_channel(pair.i_path, n_samples), _read_channel(pair.q_path, n_samples)


READ_BLOCK = 1 << 18
"""Samples read per step (1 MiB): each block is checked for NaN and infinities while in cache."""


def _read_channel(path: Path, n_samples: int) -> np.ndarray:
    """One channel's n_samples float32 samples, checked block by block (DaqError: see read_channels).
    A block's sum is non-finite if it holds a NaN or an infinity (or finite values near float32's
    limit: then the exact scan finds nothing)."""
    channel = np.empty(n_samples, dtype="<f4")
    suspect = False
    try:
        with open(path, "rb", buffering=0) as f:
            for start in range(0, n_samples, READ_BLOCK):
                block = channel[start:start + READ_BLOCK]
                got = f.readinto(memoryview(block).cast("B"))
                if got != block.nbytes:  # the file changed under us
                    raise DaqError("length_mismatch", path, f"{start + (got or 0) // SAMPLE_BYTES} samples read, "
                                   f"expected {n_samples}")
                with np.errstate(over="ignore", invalid="ignore"):
                    suspect = suspect or not np.isfinite(np.add.reduce(block, dtype=np.float32))
    except FileNotFoundError:  # deleted since check_pair (a DAQ cleaning its directory)
        raise DaqError("missing_partner", path, "file does not exist (deleted while being read)") from None
    if suspect:
        bad = ~np.isfinite(channel)
        if bad.any():
            offset = int(np.argmax(bad))
            raise DaqError("non_finite", path, f"{int(bad.sum())} non-finite samples, the first at "
                           f"sample {offset} (byte {offset * SAMPLE_BYTES})")
    return channel


def read_pair(pair: FilePair) -> np.ndarray:
    """The file's complex samples i + 1j*q, shape (n_samples,), complex64 (errors: read_channels)."""
    return wire.interleave(*read_channels(pair))


def acquired_at_s(pair: FilePair) -> float:
    """When the DAQ acquired the pair's file, Unix seconds (UTC): the later modification time of its
    two files, i.e. when the DAQ finished writing it; NaN (unknown) for a time before 1970, logged.
    Raises DaqError if a file is gone.

    The one place that decides a pair's acquisition time: the producer stamps it on every message of
    the file (``SliceBatch.acquired_at_s``). A SigMF sidecar's capture time, where the DAQ writes
    one (core/run_meta.py), takes precedence over the modification times.
    """
    sidecar = read_sidecar(pair)
    if sidecar is not None and sidecar.capture_time_s is not None:
        return sidecar.capture_time_s
    times = []
    for path in (pair.i_path, pair.q_path):
        try:
            times.append(path.stat().st_mtime)
        except FileNotFoundError:
            raise DaqError("missing_partner", path, "file does not exist") from None
    latest = max(times)
    if not latest >= 0:  # a DAQ clock not set: say so, and send the file as of unknown time
        log.warning("%s: modification time %s is before 1970; acquisition time unknown", pair.i_path.name, latest)
        return float("nan")
    return latest


def read_sidecar(pair: FilePair) -> "run_meta.Sidecar | None":
    """The pair's SigMF sidecar (``duck_NNNNN.sigmf-meta``), or None; DaqError ``bad_sidecar`` if
    it cannot be read."""
    path = run_meta.sidecar_path(pair.i_path)
    if path is None:
        return None
    try:
        return run_meta.read_sigmf(path)
    except run_meta.MetadataError as exc:
        raise DaqError("bad_sidecar", path, str(exc)) from None


def check_sidecar(pair: FilePair, sample_rate_hz: float, lo_frequency_hz: float) -> None:
    """DaqError ``sidecar_mismatch`` if the pair's sidecar gives another sample rate or centre
    frequency than the run's (Hz)."""
    sidecar = read_sidecar(pair)
    if sidecar is None:
        return
    for name, said, run_value in (("sample rate", sidecar.sample_rate_hz, sample_rate_hz),
                                  ("centre frequency", sidecar.centre_frequency_hz, lo_frequency_hz)):
        if said is not None and abs(said - run_value) > 1e-9 * max(abs(said), abs(run_value), 1.0):
            raise DaqError("sidecar_mismatch", pair.i_path, f"its SigMF sidecar gives {name} {said:g} Hz, "
                           f"the run's is {run_value:g} Hz")


def whole_slices(samples: np.ndarray, slice_len: int) -> np.ndarray:
    """View of the whole slices, shape (n_slices, slice_len); the tail is left out."""
    layout = SliceLayout(samples.shape[0], slice_len)
    return samples[: layout.n_slices * slice_len].reshape(layout.n_slices, slice_len)


def write_pair(directory: Path | str, file_index: int, samples: np.ndarray) -> FilePair:
    """Write complex samples as a duck_i/duck_q pair of little-endian float32 files."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    pair = pair_paths(directory, file_index)
    samples = np.asarray(samples)
    for path, part in ((pair.i_path, samples.real), (pair.q_path, samples.imag)):
        tmp = path.with_suffix(".tmp")
        np.ascontiguousarray(part, dtype="<f4").tofile(tmp)
        tmp.rename(path)  # a reader never sees a half-written file under its final name
    return pair
