"""Read a run from the workers' web views (the live tables): its average and its files, page by page.

No recomputation: what is read is what the tables hold. Any worker can be asked; it routes the
request to the worker that owns the run's table partition. Spectra come in the binary form of the
files view (``format=npz``: float64 arrays, no JSON floats); writing them to a file is
quax_faust/exports/.
"""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from quax_faust.settings import Settings

PAGE_FILES = 64
"""Files per page of spectra (3 MiB at 3072 bins): one HDF5 chunk of the export, one short answer."""
NOT_COLUMNS = ("run", "file_index", "mean", "std")
"""Keys of a file's document that are not one number per file."""


class TablesUnavailable(RuntimeError):
    """No worker answered, or the answer was an error."""


def get(settings: Settings, path: str, decode: Callable[[bytes], Any]) -> Any:
    """GET path from the first worker that answers, ``decode(body)`` it; raises
    TablesUnavailable with every error seen (an answer that does not decode: the next worker)."""
    errors = []
    for base in settings.worker_urls:
        url = base + path
        try:
            with urllib.request.urlopen(url, timeout=settings.http_timeout_s) as response:
                return decode(response.read())
        except urllib.error.HTTPError as exc:
            body = exc.read().decode(errors="replace")[:300]
            if exc.code == 404:
                raise TablesUnavailable(f"{url}: 404 {body}") from None
            errors.append(f"{url}: HTTP {exc.code} {body}")
        except (urllib.error.URLError, OSError, ValueError) as exc:  # ValueError: JSON, npz
            errors.append(f"{url}: {exc}")
    raise TablesUnavailable("no worker answered:\n  " + "\n  ".join(errors))


def get_json(settings: Settings, path: str) -> dict[str, Any]:
    """GET path from the first worker that answers, as JSON."""
    return get(settings, path, json.loads)


def _array(values: list[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def _column(values: list) -> np.ndarray:
    """One number per file from JSON: int64 if all are integers, else float64 (null: NaN)."""
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return np.array(values, dtype=np.int64)
    return _array(values)


@dataclass(frozen=True)
class RunAverage:
    """A run's document (``/quax/runs/<run>/``) as arrays: power in V**2/Hz per bin, frequency in Hz
    (fftshifted, plus the run's LO frequency), and the run's metadata."""

    run: str
    frequency_hz: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    """Scatter of single-slice periodograms."""
    sem: np.ndarray
    """Standard error of the mean, std/sqrt(n_slices)."""
    n_slices: int
    file_indices: np.ndarray
    """The files folded into this average, ascending (int64)."""
    sample_rate_hz: float
    tail_samples_dropped: int
    metadata: dict[str, Any] = field(default_factory=dict)
    """The run's own metadata as recorded (docs/usage.md, "Run metadata"); {} if none."""

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> RunAverage:
        return cls(run=doc["run"], frequency_hz=_array(doc["frequency_hz"]), mean=_array(doc["mean"]),
                   std=_array(doc["std"]), sem=_array(doc["sem"]), n_slices=int(doc["n_slices"]),
                   file_indices=np.array(doc["file_indices"], dtype=np.int64),
                   sample_rate_hz=float(doc["sample_rate_hz"]),
                   tail_samples_dropped=int(doc.get("tail_samples_dropped") or 0),
                   metadata=dict(doc.get("metadata") or {}))

    @property
    def slice_len(self) -> int:
        return int(self.mean.shape[0])

    @property
    def lo_frequency_hz(self) -> float:
        """The run's LO as the views applied it: the frequency of the bin at 0 Hz baseband
        (fftshifted: the middle one)."""
        return float(self.frequency_hz[self.slice_len // 2])


@dataclass(frozen=True)
class FilePage:
    """A page of a run's finished files, one row per file, ascending file_index."""

    file_index: np.ndarray
    """(n,) int64."""
    mean: np.ndarray
    """(n, n_bins) float64, V**2/Hz: each file's mean periodogram."""
    std: np.ndarray
    """(n, n_bins) float64, V**2/Hz: the scatter of its single-slice periodograms."""
    columns: dict[str, np.ndarray]
    """One number per file, named as in the files view: n_slices, latency_s, completed_at_s, ..."""

    def __len__(self) -> int:
        return int(self.file_index.shape[0])

    def select(self, rows: np.ndarray) -> FilePage:
        return FilePage(self.file_index[rows], self.mean[rows], self.std[rows],
                        {name: values[rows] for name, values in self.columns.items()})


def decode_files_page(body: bytes) -> FilePage:
    """An answer of the files view with spectra: the binary page (``format=npz``, a zip archive), or
    JSON (a worker that does not know the format ignores it and answers JSON: the same page)."""
    if not body.startswith(b"PK"):
        files = json.loads(body)["files"]
        names = [k for k in (files[0] if files else {}) if k not in NOT_COLUMNS]
        n_bins = len(files[0]["mean"]) if files else 0
        return FilePage(np.array([f["file_index"] for f in files], dtype=np.int64),
                        np.array([_array(f["mean"]) for f in files]).reshape(len(files), n_bins),
                        np.array([_array(f["std"]) for f in files]).reshape(len(files), n_bins),
                        {name: _column([f[name] for f in files]) for name in names})
    with np.load(io.BytesIO(body), allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    return FilePage(arrays["file_index"].astype(np.int64), arrays["mean"], arrays["std"],
                    {name: a for name, a in arrays.items() if name not in NOT_COLUMNS and a.ndim == 1})


def get_files_page(settings: Settings, run: str, start: int, limit: int) -> FilePage:
    """Up to ``limit`` finished files of the run from file_index ``start`` on, with their spectra."""
    return get(settings, f"/quax/runs/{run}/files/?start={start}&limit={limit}&spectra=1&format=npz",
               decode_files_page)


def fetch_run_average(settings: Settings, run: str) -> RunAverage:
    return RunAverage.from_document(get_json(settings, f"/quax/runs/{run}/"))


def iter_file_pages(settings: Settings, run: str, file_indices: np.ndarray, page_size: int = PAGE_FILES,
                    progress: Callable[[int, int], None] | None = None) -> Iterator[FilePage]:
    """The files among ``file_indices`` (those of a RunAverage: files finished later are left out, so
    the files add up to that average), one page at a time; files lost from the table are skipped.

    ``progress(files_fetched, n_files)`` is called after each page (e.g. to draw a bar)."""
    wanted = np.unique(np.asarray(file_indices, dtype=np.int64))
    fetched = 0
    start = int(wanted[0]) if wanted.size else 0
    while wanted.size and start <= wanted[-1]:
        page = get_files_page(settings, run, start, page_size)
        if not len(page):
            break
        start = int(page.file_index[-1]) + 1
        page = page.select(np.isin(page.file_index, wanted))
        fetched += len(page)
        if progress is not None:
            progress(fetched, int(wanted.size))
        if len(page):
            yield page


def fetch_run(settings: Settings, run: str, page_size: int = PAGE_FILES,
              progress: Callable[[int, int], None] | None = None) -> dict[str, np.ndarray]:
    """The run's average and every file's spectrum, all in memory, as the .npz export names them
    (its arrays but the per-file times, except the acquisition time; docs/usage.md): for
    comparisons (Spark verify, tests).
    ``quax export`` streams the pages to a file instead (quax_faust/exports/)."""
    average = fetch_run_average(settings, run)
    pages = list(iter_file_pages(settings, run, average.file_indices, page_size, progress))
    n_bins = average.slice_len

    def rows(name: str) -> np.ndarray:
        parts = [getattr(p, name) for p in pages]
        return np.concatenate(parts) if parts else np.zeros((0, n_bins))

    def column(name: str, dtype) -> np.ndarray:
        return np.concatenate([p.columns[name] for p in pages]).astype(dtype) if pages else np.zeros(0, dtype)

    return {
        "frequency_hz": average.frequency_hz,
        "run_mean": average.mean,
        "run_sem": average.sem,
        "run_std": average.std,
        "n_slices_total": np.int64(average.n_slices),
        "file_index": np.concatenate([p.file_index for p in pages]) if pages else np.zeros(0, np.int64),
        "file_mean": rows("mean"),
        "file_std": rows("std"),
        "file_n_slices": column("n_slices", np.int64),
        "file_latency_s": column("latency_s", np.float64),
        "file_acquired_at_s": np.concatenate([p.columns.get("acquired_at_s", np.full(p.file_index.shape, np.nan))
                                              for p in pages]).astype(np.float64) if pages else np.zeros(0),
        "run": np.array(run),
    }

