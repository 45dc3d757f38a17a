"""The workers' read-only JSON web views, as a Faust blueprint (docs/usage.md#web-views).

Run data lives on the worker owning the single `runs` partition: a view about a run is routed there
by Faust's table router from whichever worker received the request. The documents themselves are
built in views.py.
"""

from __future__ import annotations

import functools
import time

from faust.exceptions import SameNode
from faust.web import Blueprint, Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from quax_faust.core import dsp
from quax_faust.core.accumulators import RunAccumulator
from quax_faust.core.errors import QuaxError
from quax_faust.search import candidates
from quax_faust.stream import views
from quax_faust.stream.chain import Chain

blueprint = Blueprint("quax")


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
                return await view.app.router.route_req(table, key, view.web, request)
            except SameNode:
                try:
                    return await handler(view, request, *args, **kwargs)
                except QuaxError as exc:
                    return view.json({"error": str(exc), "reason": exc.reason}, status=500)
        return get
    return decorate


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
        chain = Chain.of(self.app)
        acc = chain.run(run)
        return self.json(views.run_document(acc, chain.settings.lo_frequency_hz)) if acc else _no_run(self, run)


@blueprint.route("/quax/runs/{run}/files/", name="run_files")
class RunFilesView(View):
    """A run's finished files; ``?start=K&limit=N&spectra=1`` pages and adds mean/std."""

    @routed("runs", match_info="run")
    async def get(self, request: Request, run: str) -> Response:
        chain = Chain.of(self.app)
        acc = chain.run(run)
        if acc is None:
            return _no_run(self, run)
        try:
            start = int(request.query.get("start", 0))
            limit = min(int(request.query.get("limit", 100)), 1000)
        except ValueError:
            return self.json({"error": "start and limit must be integers"}, status=400)
        with_spectra = request.query.get("spectra", "0") in {"1", "true", "yes"}
        indices = [i for i in acc.files if i >= start][:limit]
        files = [views.file_document(spec, with_spectrum=with_spectra)
                 for spec in (chain.file_spectrum(run, i) for i in indices) if spec is not None]
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
        frequency_hz = dsp.frequency_axis_hz(spec.slice_len, spec.sample_rate_hz, chain.settings.lo_frequency_hz)
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
        app = self.app
        assignment = sorted(f"{tp.topic}/{tp.partition}" for tp in app.consumer.assignment()) \
            if app.consumer else []
        return self.json({
            "worker": app.conf.canonical_url.human_repr() if app.conf.canonical_url else None,
            "status": "ok", "time_s": time.time(), "assigned": assignment,
            "slices_total": REGISTRY.get_sample_value("quax_slices_total"),
            "files_completed_total": REGISTRY.get_sample_value("quax_files_completed_total"),
        })


@blueprint.route("/metrics", name="metrics")
class MetricsView(View):
    """Prometheus text format: our quax_* metrics and Faust's faust_* (docs/metrics.md)."""

    async def get(self, request: Request) -> Response:
        return self.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])
