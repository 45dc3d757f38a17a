"""The workers' read-only web views, as a Faust blueprint (docs/usage.md#web-views): JSON, and a
page of files' spectra in binary (``format=npz``) for exports.

Run data lives on the worker owning the single `runs` partition: a view about a run is routed there
(the partition's owner from Faust's table router) from whichever worker received the request. The
documents themselves are built in views.py.
"""

from __future__ import annotations

import asyncio
import functools
import io
import time

import aiohttp
import numpy as np
from faust.exceptions import SameNode
from faust.web import Blueprint, Request, Response, View
from faust.web.exceptions import ServiceUnavailable
from yarl import URL
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from quax_faust.core import dsp
from quax_faust.core.accumulators import RunAccumulator
from quax_faust.core.errors import QuaxError
from quax_faust.core.wire import FileSpectrum
from quax_faust.search import candidates
from quax_faust.stream import views
from quax_faust.stream.chain import Chain

blueprint = Blueprint("quax")
NPZ_CONTENT_TYPE = "application/octet-stream"


def routed(table: str, *, match_info: str | None = None, query_param: str | None = None,
           exact_key: str | None = None):
    """Serve the request on the worker owning the key's partition of ``table`` (what Faust's
    ``app.table_route`` does, for views declared before the app exists). A stored value that cannot
    be read answers 500 with its reason."""
    def decorate(handler):
        @functools.wraps(handler)
        async def get(view: View, request: Request, *args, **kwargs) -> Response:
            key = exact_key or (request.match_info[match_info] if match_info else request.query[query_param])
            try:
                return await _route(view, table, key, request)
            except SameNode:
                try:
                    return await handler(view, request, *args, **kwargs)
                except QuaxError as exc:
                    return view.json({"error": str(exc), "reason": exc.reason}, status=500)
        return get
    return decorate


def _host_port(url: URL) -> tuple[str, int]:
    return (url.host if url.scheme else url.path) or "", int(url.port or 80)


async def _route(view: View, table: str, key: str, request: Request) -> Response:
    """Faust's ``router.route_req``, passing the owner's answer on byte for byte: Faust's own
    (faust-streaming 0.15.3, app/router.py) decodes it as text, which corrupts a binary page.
    Raises SameNode when this worker owns the key. An owner that cannot be reached within
    route_timeout_s (its advertised web host unreachable from here) answers 502, or 504 on a
    timeout, naming it: a reader would otherwise see only its own timeout."""
    app = view.app
    try:
        owner = app.router.key_store(table, key)
    except KeyError:
        raise ServiceUnavailable() from None
    host, port = _host_port(owner)
    if (host, port) == _host_port(app.conf.canonical_url):
        raise SameNode()
    wait_s = Chain.of(app).settings.route_timeout_s
    timeout = aiohttp.ClientTimeout(total=None, connect=wait_s, sock_read=wait_s)  # a big page may take longer
    try:
        async with app.http_client.request(method=request.method, headers=request.headers, timeout=timeout,
                                           url=request.url.with_host(host).with_port(port)) as answer:
            return view.bytes(await answer.read(), content_type=answer.content_type, status=answer.status)
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        owner_url = f"http://{host}:{port}"
        timed_out = isinstance(exc, asyncio.TimeoutError)
        reason = f"no answer within {wait_s:g} s" if timed_out else f"{type(exc).__name__}: {exc}"
        return view.json({"error": f"worker {owner_url} (owner of table {table}, key {key!r}) could not be "
                                   f"reached from worker {app.conf.canonical_url}: {reason}",
                          "unreachable_worker": owner_url, "table": table},
                         status=504 if timed_out else 502)


def files_page_npz(specs: list[FileSpectrum]) -> bytes:
    """Files as one .npz: file_index (n,), mean and std (n, n_bins) float64 in V**2/Hz, and one
    array (n,) per number of the file's JSON document (n_slices, latency_s, times in Unix s...)."""
    docs = [views.file_document(spec, with_spectrum=False) for spec in specs]
    n_bins = specs[0].slice_len if specs else 0
    arrays = {"file_index": np.array([spec.file_index for spec in specs], dtype=np.int64),
              "mean": np.array([spec.mean for spec in specs], dtype=np.float64).reshape(len(specs), n_bins),
              "std": np.array([spec.std for spec in specs], dtype=np.float64).reshape(len(specs), n_bins)}
    for name in (docs[0] if docs else {}):
        if name not in ("run", *arrays):
            values = [doc[name] for doc in docs]
            integers = all(isinstance(v, int) for v in values)
            arrays[name] = np.array([np.nan if v is None else v for v in values],  # null: NaN, as in JSON
                                    dtype=np.int64 if integers else np.float64)
    out = io.BytesIO()
    np.savez(out, **arrays)
    return out.getvalue()


def _page_of(intervals: np.ndarray, start: int, limit: int) -> list[int]:
    """The first ``limit`` file indices >= ``start`` of a run's files, [start, stop) ``intervals``:
    a page costs the intervals, not every file of the run (144,000 in a week)."""
    indices: list[int] = []
    for first, stop in intervals.tolist():
        if len(indices) >= limit:
            break
        if stop > start:
            indices += range(max(first, start), min(stop, max(first, start) + limit - len(indices)))
    return indices


def _chain_and_run(view: View, run: str) -> tuple[Chain, RunAccumulator | None]:
    chain = Chain.of(view.app)
    return chain, chain.run(run)


def _no_run(view: View, run: str) -> Response:
    return view.json({"error": f"no run {run!r}"}, status=404)


@blueprint.route("/quax/runs/", name="runs")
class RunsView(View):
    @routed("runs", exact_key="runs")
    async def get(self, request: Request) -> Response:
        chain = Chain.of(self.app)
        runs = [views.run_summary(RunAccumulator.from_bytes(value)) for _, value in chain.runs.items()]
        return self.json({"runs": sorted(runs, key=lambda r: r["run"])})


@blueprint.route("/quax/runs/{run}/", name="run")
class RunView(View):
    @routed("runs", match_info="run")
    async def get(self, request: Request, run: str) -> Response:
        chain, acc = _chain_and_run(self, run)
        if acc is None:
            return _no_run(self, run)
        return self.json({**views.run_document(acc, chain.lo_frequency_hz(run)), "metadata": chain.metadata(run)})


@blueprint.route("/quax/runs/{run}/files/", name="run_files")
class RunFilesView(View):
    """A run's finished files; ``?start=K&limit=N&spectra=1`` pages and adds mean/std;
    ``&format=npz`` answers the page with spectra in binary (files_page_npz)."""

    @routed("runs", match_info="run")
    async def get(self, request: Request, run: str) -> Response:
        chain, acc = _chain_and_run(self, run)
        if acc is None:
            return _no_run(self, run)
        try:
            start = int(request.query.get("start", 0))
            limit = min(int(request.query.get("limit", 100)), 1000)
        except ValueError:
            return self.json({"error": "start and limit must be integers"}, status=400)
        answer_format = request.query.get("format", "json")
        if answer_format not in ("json", "npz"):
            return self.json({"error": f"format must be json or npz, got {answer_format!r}"}, status=400)
        with_spectra = request.query.get("spectra", "0") in {"1", "true", "yes"}
        indices = _page_of(acc.files.bounds(), start, limit)
        specs = [spec for spec in (chain.file_spectrum(run, i) for i in indices) if spec is not None]
        if answer_format == "npz":
            return self.bytes(files_page_npz(specs), content_type=NPZ_CONTENT_TYPE)
        files = [views.file_document(spec, with_spectrum=with_spectra) for spec in specs]
        return self.json({"run": run, "n_files": acc.n_files, "files": files})


@blueprint.route("/quax/runs/{run}/files/{file_index}/", name="file")
class FileView(View):
    @routed("runs", match_info="run")
    async def get(self, request: Request, run: str, file_index: str) -> Response:
        chain = Chain.of(self.app)
        index = _latest_or_int(chain, run, file_index)
        spec = chain.file_spectrum(run, index) if index is not None else None
        if spec is None:
            return self.json({"error": f"no finished file {file_index} in run {run!r}"}, status=404)
        frequency_hz = dsp.frequency_axis_hz(spec.slice_len, spec.sample_rate_hz, chain.lo_frequency_hz(run))
        return self.json({**views.file_document(spec), "frequency_hz": views.floats(frequency_hz)})


def _latest_or_int(chain: Chain, run: str, file_index: str) -> int | None:
    if file_index == "latest":
        acc = chain.run(run)
        return acc.latest_file_index if acc is not None and acc.n_files else None
    try:
        return int(file_index)
    except ValueError:
        return None


@blueprint.route("/quax/runs/{run}/candidates/", name="candidates")
class RunCandidatesView(View):
    """The run's candidates: frequency (Hz, plus the LO), significance, power, first seen file..."""

    @routed("runs", match_info="run")
    async def get(self, request: Request, run: str) -> Response:
        chain = Chain.of(self.app)
        stored = chain.candidates.get(run.encode())
        if stored:
            return self.json(candidates.decode(stored))
        if chain.run(run) is None:
            return _no_run(self, run)
        return self.json(candidates.empty_document(run, config=chain.search_config))


@blueprint.route("/quax/files/", name="file_state")
class FileStateView(View):
    """A file's live accumulation state: ``?key=RUN/0000000012`` (routed to the worker owning it)."""

    @routed("files", query_param="key")
    async def get(self, request: Request) -> Response:
        acc = Chain.of(self.app).file_state(request.query["key"].encode())
        if acc is None:
            return self.json({"error": f"no file {request.query['key']!r} in the files table"}, status=404)
        return self.json({"run": acc.run, "file_index": acc.file_index, "status": acc.status,
                          "n_counted": acc.n_counted, "slices_in_file": acc.slices_in_file,
                          "duplicate_slices": acc.duplicate_slices,
                          "uncounted": [int(i) for i in (~acc.counted).nonzero()[0][:100]]})


@blueprint.route("/quax/health/", name="health")
class HealthView(View):
    """This worker: its assigned partitions and counters (not routed)."""

    async def get(self, request: Request) -> Response:
        app, chain = self.app, Chain.of(self.app)
        assignment = sorted(f"{tp.topic}/{tp.partition}" for tp in app.consumer.assignment()) \
            if app.consumer else []
        return self.json({
            "worker": app.conf.canonical_url.human_repr() if app.conf.canonical_url else None,
            "status": "ok", "time_s": time.time(), "assigned": assignment,
            # Where its tables come from: quax export records these topics' offsets.
            "consumer_group": app.conf.id, "slices_topic": chain.settings.slices_topic,
            "spectra_topic": chain.settings.spectra_topic,
            "settings": views.agreed_settings(chain.settings),  # for `quax doctor`
            "slices_total": REGISTRY.get_sample_value("quax_slices_total"),
            "files_completed_total": REGISTRY.get_sample_value("quax_files_completed_total"),
        })


@blueprint.route("/metrics", name="metrics")
class MetricsView(View):
    """Prometheus text format: our quax_* metrics and Faust's faust_* (docs/metrics.md)."""

    async def get(self, request: Request) -> Response:
        return self.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])
