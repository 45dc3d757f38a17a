"""Read a run from the workers' web views (the live tables) and write it as .npz or .csv.

No recomputation: what is written is what the tables hold. Any worker can be asked; it routes the
request to the worker that owns the run's table partition.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

import numpy as np

from quax_faust.settings import Settings


class TablesUnavailable(RuntimeError):
    """No worker answered, or the answer was an error."""


def get_json(settings: Settings, path: str) -> dict[str, Any]:
    """GET path from the first worker that answers; raises TablesUnavailable with every error seen."""
    errors = []
    for base in settings.worker_urls:
        url = base + path
        try:
            with urllib.request.urlopen(url, timeout=settings.http_timeout_s) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            body = exc.read().decode(errors="replace")[:300]
            if exc.code == 404:
                raise TablesUnavailable(f"{url}: 404 {body}") from None
            errors.append(f"{url}: HTTP {exc.code} {body}")
        except (urllib.error.URLError, OSError, json.JSONDecodeError) as exc:
            errors.append(f"{url}: {exc}")
    raise TablesUnavailable("no worker answered:\n  " + "\n  ".join(errors))


def _array(values: list[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def fetch_run(settings: Settings, run: str, page_size: int = 200,
              progress: Callable[[int, int], None] | None = None) -> dict[str, np.ndarray]:
    """The run's average and every finished file's spectrum, as arrays (layout of docs/usage.md).

    ``progress(files_fetched, n_files)`` is called after each page (e.g. to draw a bar)."""
    doc = get_json(settings, f"/quax/runs/{run}/")
    files: list[dict[str, Any]] = []
    start = 0
    while True:
        page = get_json(settings, f"/quax/runs/{run}/files/?start={start}&limit={page_size}&spectra=1")
        files += page["files"]
        if progress is not None:
            progress(len(files), max(int(doc["n_files"]), len(files)))
        if len(page["files"]) < page_size:
            break
        start = page["files"][-1]["file_index"] + 1
    n_bins = len(doc["mean"])
    return {
        "frequency_hz": _array(doc["frequency_hz"]),
        "run_mean": _array(doc["mean"]),
        "run_sem": _array(doc["sem"]),
        "run_std": _array(doc["std"]),
        "n_slices_total": np.int64(doc["n_slices"]),
        "file_index": np.array([f["file_index"] for f in files], dtype=np.int64),
        "file_mean": np.array([_array(f["mean"]) for f in files]).reshape(len(files), n_bins),
        "file_std": np.array([_array(f["std"]) for f in files]).reshape(len(files), n_bins),
        "file_n_slices": np.array([f["n_slices"] for f in files], dtype=np.int64),
        "file_latency_s": np.array([f["latency_s"] for f in files], dtype=np.float64),
        "run": np.array(run),
    }


def write_export(data: dict[str, np.ndarray], out: Path) -> Path:
    """Write .npz (all arrays) or .csv (one row per bin: frequency, run mean, sem, then each file)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".npz":
        np.savez(out, **data)
    elif out.suffix == ".csv":
        columns = [data["frequency_hz"], data["run_mean"], data["run_sem"], *data["file_mean"]]
        header = ",".join(["frequency_hz", "run_mean", "run_sem"]
                          + [f"file_{i:05d}_mean" for i in data["file_index"]])
        np.savetxt(out, np.column_stack(columns), delimiter=",", header=header, comments="",
                   fmt="%.10g")
    else:
        raise ValueError(f"{out}: export format must be .npz or .csv")
    return out
