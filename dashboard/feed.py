"""What the dashboard reads from the workers: run tables through their web views, and health.

Blocking HTTP with short timeouts; the page calls ``TableFeed.poll`` in a worker thread, never on
Bokeh's event loop. Nothing is recomputed from raw data: spectra come from the tables
(``/quax/runs/...``; the files' spectra as binary pages, ``format=npz``), health from each worker's
``/metrics`` and ``/quax/health/``.
"""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from quax_faust.client import FilePage, TablesUnavailable, get_files_page, get_json
from quax_faust.settings import Settings

from . import shaping

SPECTRA_PER_REQUEST = 16
"""Files with spectra asked for in one request (0.8 MB of float64 at 3072 bins): keeps each answer
well inside the request timeout when a whole waterfall is loaded at once."""


@dataclass(frozen=True)
class PollRequest:
    """What the page already shows, so that a poll only fetches what is new."""

    wanted_run: str | None
    """The run chosen in the page, or None to follow the most recently updated run."""
    shown_run: str | None
    shown_version: tuple | None
    seen_files: frozenset[int]


@dataclass
class WorkerReading:
    url: str
    counters: shaping.WorkerCounters | None
    health: dict | None
    error: str | None = None


@dataclass
class Poll:
    """One poll's answers. ``run_doc`` and ``files`` are None/empty when nothing changed."""

    time_s: float
    runs: list[dict] | None
    run: str | None
    error: str | None = None
    run_doc: dict | None = None
    files: list[dict] = field(default_factory=list)
    """Newly seen files, ascending file_index; those inside the waterfall carry mean and std."""
    candidates: dict | None = None
    candidates_known: bool = False
    """False when the candidates view gave no usable answer (keep what is shown)."""
    workers: list[WorkerReading] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None


class TableFeed:
    """Reads the workers named by the settings (any worker routes run requests to the owner)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._http = settings.replace(http_timeout_s=settings.dashboard_http_timeout_s)

    def get(self, path: str) -> dict[str, Any]:
        return get_json(self._http, path)

    def poll(self, request: PollRequest) -> Poll:
        now = time.time()
        workers = self.read_workers()
        try:
            runs = self.get("/quax/runs/")["runs"]
        except TablesUnavailable as exc:
            return Poll(now, None, request.shown_run, error=str(exc), workers=workers)
        run = shaping.choose_run(runs, request.wanted_run)
        poll = Poll(now, runs, run, workers=workers)
        if run is None:
            return poll
        summary = next(r for r in runs if r["run"] == run)
        if run == request.shown_run and shaping.run_version(summary) == request.shown_version:
            return poll
        try:
            poll.run_doc = self.get(f"/quax/runs/{run}/")
            seen = request.seen_files if run == request.shown_run else frozenset()
            poll.files = self.read_new_files(run, poll.run_doc["file_indices"], seen)
        except TablesUnavailable as exc:
            poll.error, poll.run_doc, poll.files = str(exc), None, []
            return poll
        poll.candidates, poll.candidates_known = self.read_candidates(run)
        return poll

    def read_new_files(self, run: str, file_indices: list[int], seen: frozenset[int]) -> list[dict]:
        """Files of the run not yet shown: spectra for the waterfall's rows, metadata for older ones."""
        with_spectra, metadata_only = shaping.files_to_fetch(file_indices, seen, self.settings.waterfall_files)
        docs: dict[int, dict] = {}
        for wanted, spectra in ((with_spectra, True), (metadata_only, False)):
            pending = set(wanted)
            page = SPECTRA_PER_REQUEST if spectra else 1000
            while pending:
                start = min(pending)
                if spectra:
                    answered = file_documents(run, get_files_page(self._http, run, start, page))
                else:
                    answered = self.get(f"/quax/runs/{run}/files/?start={start}&limit={page}")["files"]
                got = [f for f in answered if f["file_index"] in pending]
                for f in got:
                    docs[f["file_index"]] = f
                    pending.discard(f["file_index"])
                if not answered:
                    break
                # Files missing below the last one answered were lost from the tables: skip them.
                pending = {i for i in pending if i > answered[-1]["file_index"]}
        return [docs[i] for i in sorted(docs)]

    def read_candidates(self, run: str) -> tuple[dict | None, bool]:
        """The run's candidate lines from the analysis view; a 404 means none (or no analysis)."""
        try:
            return self.get(f"/quax/runs/{run}/candidates/"), True
        except TablesUnavailable as exc:
            if ": 404 " in str(exc):
                return None, True
            return None, False

    def read_workers(self) -> list[WorkerReading]:
        """/metrics and /quax/health/ of every worker (not routed: each answers for itself)."""
        readings = []
        for url in self.settings.worker_urls:
            try:
                text = self._get_text(url + "/metrics")
                health = json.loads(self._get_text(url + "/quax/health/"))
                readings.append(WorkerReading(url, shaping.parse_metrics(text, self.settings.slices_topic),
                                              health))
            except (urllib.error.URLError, OSError, ValueError) as exc:
                readings.append(WorkerReading(url, None, None, error=str(exc)))
        return readings

    def _get_text(self, url: str) -> str:
        with urllib.request.urlopen(url, timeout=self.settings.dashboard_http_timeout_s) as response:
            return response.read().decode()


def file_documents(run: str, page: FilePage) -> list[dict]:
    """A binary page as the files view's JSON documents (numbers as Python scalars, NaN as None),
    with mean and std as float64 arrays."""
    docs = []
    for row, file_index in enumerate(page.file_index.tolist()):
        numbers = {name: values[row].item() for name, values in page.columns.items()}
        docs.append({"run": run, "file_index": file_index,
                     **{k: None if isinstance(v, float) and math.isnan(v) else v for k, v in numbers.items()},
                     "mean": page.mean[row], "std": page.std[row]})
    return docs


def spectrum_arrays(doc: dict) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) of a file document with spectra, as float64 arrays in V**2/Hz."""
    if isinstance(doc["mean"], np.ndarray):  # from a binary page
        return doc["mean"], doc["std"]
    return shaping.as_array(doc["mean"]), shaping.as_array(doc["std"])
