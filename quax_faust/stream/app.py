"""The Faust app: topics, tables, agents and web views of the live chain, top-down.

    slices (4 partitions, key run/file) --transform_slices--> table files   (per-file running sums)
                                                     \\-----> spectra (1 partition, key run)
    spectra --fold_spectra--> table runs          (run-wide average, files folded)
                         \\--> table file_spectra  (each finished file's mean and std)
                         \\--> table candidates, topic candidates (search of the new average)

Start a worker with ``quax worker --index K`` (Procfile runs four). Settings: quax_faust/settings.py.
"""

from __future__ import annotations

import asyncio
import logging
import time

import faust
from aiokafka.errors import IllegalStateError
from faust.web import Request, Response, View
from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from quax_faust import connection
from quax_faust.stream import faust_fixes, malloc, metrics, table_store, views

from quax_faust.search import candidates

from quax_faust.core import dsp, wire
from quax_faust.core.accumulators import COMPLETE, FileAccumulator, RunAccumulator, StateError
from quax_faust.settings import Settings

log = logging.getLogger(__name__)
settings = Settings.from_env()
malloc.keep_freed_memory()  # multi-MiB fetches and records reuse freed memory (malloc.py)
faust_fixes.install()  # flush really flushes; only processed offsets are committed: faust_fixes.py
faust_fixes.guard_topics([settings.slices_topic, settings.spectra_topic])

# RocksDB: every table database of this worker shares one memtable budget and one block cache
# (table_store.py), so the tables' memory is bounded whatever the run length.
ROCKSDB_OPTIONS = {"write_buffer_size": 8 << 20, "max_write_buffer_number": 2,
                   "target_file_size_base": 16 << 20,
                   "memtable_budget_bytes": settings.table_memtable_budget_bytes,
                   "block_cache_budget_bytes": settings.table_block_cache_budget_bytes}

app = faust.App(
    settings.app_id,
    broker=[f"kafka://{hostport}" for hostport in settings.broker.split(",")],
    broker_credentials=connection.faust_credentials(settings),
    store=f"{table_store.URL_SCHEME}://",
    topic_partitions=settings.partitions,
    topic_replication_factor=settings.replication_factor,
    table_standby_replicas=0,
    processing_guarantee="at_least_once",
    producer_max_request_size=settings.max_message_bytes,
    consumer_max_fetch_size=settings.max_message_bytes,
    stream_buffer_maxsize=settings.stream_buffer_maxsize,
    broker_session_timeout=settings.session_timeout_s,
    broker_heartbeat_interval=settings.session_timeout_s / 10,
    web_host=settings.web_host,
    web_bind=settings.web_host,
    consumer_auto_offset_reset="earliest",
)
# Faust's own sensor (faust_*: events, commits, rebalances; its latencies are in ms) joins our
# quax_* metrics on /metrics (docs/metrics.md).
app.monitor = PrometheusMonitor(metrics=FaustMetrics.create(REGISTRY, "faust"))

raw = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
slices_topic = app.topic(settings.slices_topic, partitions=settings.partitions, **raw)
spectra_topic = app.topic(settings.spectra_topic, partitions=1, **raw)
rejected_topic = app.topic(f"{settings.slices_topic}.rejected", partitions=1, **raw)

raw_table = {"key_type": bytes, "value_type": bytes, "options": ROCKSDB_OPTIONS}
files_table = app.Table("files", partitions=settings.partitions, **raw_table)
runs_table = app.Table("runs", partitions=1, **raw_table)
file_spectra_table = app.Table("file_spectra", partitions=1, **raw_table)


@app.task
async def plan_fft() -> None:
    """FFTW's plan is made when the worker starts, not inside the first file's latency."""
    dsp.plan_fft(settings.slice_len, settings.fft_block_rows, settings.fft_threads)


@app.agent(slices_topic)
async def transform_slices(stream):
    """Decode slice batches, FFT them, fold them into their file; publish each finished file."""
    async for event in stream.events():
        try:
            batch = wire.decode_slice_batch(event.value)
            key = wire.file_key(batch.run, batch.file_index)
            if event.key != key:
                raise wire.WireError("key_mismatch", f"key {event.key!r} but the message is {key!r}")
            await fold_slice_batch(key, batch, event.message.tp)
        except (wire.WireError, StateError) as exc:
            await reject(event, settings.slices_topic, exc.reason, str(exc))
        done(event)


def done(event) -> None:
    """The event's effects are in the tables: its offset may be committed, and the consumer lag
    counts from the first offset not processed (faust_fixes.offsets)."""
    faust_fixes.note_processed(event.message, rebalancing=app.rebalancing)


async def fold_slice_batch(key: bytes, batch: wire.SliceBatch, tp=None) -> None:
    started = time.perf_counter()
    stored = files_table.get(key)
    acc = FileAccumulator.from_bytes(stored) if stored else FileAccumulator.for_batch(batch)
    table_seconds = time.perf_counter() - started
    metrics.MESSAGES.inc()
    if acc.status == COMPLETE:
        metrics.DUPLICATE_SLICES.inc(batch.slice_count)
        files_table[key] = stored  # re-assert, so the changelog holds what RocksDB holds
        metrics.files_in_progress.note(key, tp, True, app.consumer.assignment)
        return
    new = acc.new_slices(batch)
    sums = None
    if new.any():
        fft_started = time.perf_counter()
        sums = dsp.power_sums(batch.samples, batch.sample_rate_hz, counted=None if new.all() else new,
                              block_rows=settings.fft_block_rows, threads=settings.fft_threads)
        metrics.FFT_SECONDS.observe(time.perf_counter() - fft_started)
        metrics.SLICES.inc(sums.n_slices)
        metrics.SAMPLE_BYTES.inc(batch.samples.nbytes)
        metrics.DATA_SECONDS.inc(sums.n_slices * batch.slice_len / batch.sample_rate_hz)
    acc.add(batch, new, sums)
    metrics.DUPLICATE_SLICES.inc(batch.slice_count - (sums.n_slices if sums else 0))
    if acc.is_complete:
        spectrum = acc.spectrum(completed_at_s=time.time())
        # Wait for the broker's ack before forgetting the sums: a crash in between re-sends it, and
        # fold_spectra ignores the repeat.
        await (await spectra_topic.send(key=batch.run.encode(), value=wire.encode_file_spectrum(spectrum)))
        acc.mark_complete()
        metrics.FILES_COMPLETED.inc()
        metrics.TAIL_SAMPLES.inc(acc.tail_samples)
        metrics.DATA_SECONDS.inc(acc.tail_samples / acc.sample_rate_hz)
    put_started = time.perf_counter()
    files_table[key] = acc.to_bytes()
    metrics.TABLE_SECONDS.observe(table_seconds + time.perf_counter() - put_started)
    metrics.files_in_progress.note(key, tp, acc.is_complete, app.consumer.assignment)


@app.agent(spectra_topic)
async def fold_spectra(stream):
    """Fold each finished file into its run's average, once; keep the file's spectrum."""
    async for event in stream.events():
        try:
            spectrum = wire.decode_file_spectrum(event.value)
            run_key = spectrum.run.encode()
            file_key = wire.file_key(spectrum.run, spectrum.file_index)
            stored = runs_table.get(run_key)
            acc = RunAccumulator.from_bytes(stored) if stored else RunAccumulator.for_spectrum(spectrum)
            if acc.fold(spectrum):
                file_spectra_table[file_key] = event.value  # first: a crash before the next line re-folds
                runs_table[run_key] = acc.to_bytes()
                now = time.time()
                metrics.FILES_FOLDED.inc()
                metrics.FILE_LATENCY.observe(now - spectrum.last_produced_at_s)
                metrics.LAST_FILE_COMPLETED.set(now)
                await search_candidates(acc)  # the candidate-search section below
            else:
                metrics.DUPLICATE_FILES.inc()
                if file_spectra_table.get(file_key) is None:
                    file_spectra_table[file_key] = event.value
                runs_table[run_key] = stored
        except (wire.WireError, StateError) as exc:
            await reject(event, settings.spectra_topic, exc.reason, str(exc))
        done(event)


@app.timer(interval=max(settings.heap_trim_interval_s, 1.0))
async def bound_memory() -> None:
    """Free heap pages go back to the kernel (malloc.py); the heap and tables' memory is exported."""
    if settings.heap_trim_interval_s > 0:
        malloc.release_free_memory()
    tables = {}
    for budget in table_store.budgets_in_use():
        usage = budget.usage()
        tables["memtables"] = (usage["memtables"], budget.memtable_budget_bytes)
        tables["block_cache"] = (usage["block_cache"], budget.block_cache_budget_bytes)
    metrics.set_memory(malloc.heap_bytes(), tables)


@app.timer(interval=2.0)
async def reread_skipped_offsets() -> None:
    """Offsets the consumer skipped are read again after 5 s, a stalled partition after 20 s
    (faust_fixes.py)."""
    await faust_fixes.reread_holes(app, older_than_s=5.0, stalled_s=20.0)


async def reject(event, topic: str, reason: str, message: str) -> None:
    """Count a bad message, log it, and keep it on the dead-letter topic with its reason."""
    metrics.REJECTED.labels(topic=topic, reason=reason).inc()
    log.warning("rejected message %s[%d]@%d: %s", topic, event.message.partition,
                event.message.offset, message)
    await rejected_topic.send(key=event.key if isinstance(event.key, bytes) else None,
                              value=event.value if isinstance(event.value, bytes) else b"",
                              headers={"reason": reason.encode(), "error": message.encode()[:1000],
                                       "source": f"{topic}/{event.message.partition}/{event.message.offset}".encode()})


# ---------------------------------------------------------------------------------------------
# Consumer lag (metrics.CONSUMER_LAG, docs/metrics.md): each worker exports, for the partitions of
# the agents' source topics assigned to it, how many messages wait behind what it has processed.

@app.timer(interval=settings.consumer_lag_interval_s)
async def export_consumer_lag() -> None:
    sources = {settings.slices_topic, settings.spectra_topic}
    lags = {}
    for tp in app.consumer.assignment():
        if tp.topic not in sources:
            continue
        try:
            highwater = app.consumer.highwater(tp)  # from the last fetch response; None before one
            next_offset = faust_fixes.offsets.committable(tp)  # the first offset not processed here
            if highwater is not None and next_offset is None:  # not counted here (start unknown)
                next_offset = await asyncio.wait_for(app.consumer.position(tp), 1.0)
        except (AssertionError, IllegalStateError, asyncio.TimeoutError):  # a rebalance is under way
            continue
        if highwater is not None and next_offset is not None:
            lags[(tp.topic, tp.partition)] = highwater - next_offset
    metrics.set_consumer_lag(lags)

# End of the consumer-lag section.
# ---------------------------------------------------------------------------------------------
# Candidate search (quax_faust/search/analysis.py, candidates.py, docs/analysis.md): after each file is
# folded into a run, its new average is searched; the run's candidates document lives in the
# `candidates` table (JSON, key run) and what changed goes to the `candidates` topic.

candidates_topic = app.topic(settings.candidates_topic, partitions=1, **raw)
candidates_table = app.Table("candidates", partitions=1, **raw_table)


async def search_candidates(acc: RunAccumulator) -> None:
    """Search the run's new average (inside fold_spectra's stream iteration, so it may write)."""
    key = acc.run.encode()
    stored = candidates_table.get(key)
    try:
        doc, changed = candidates.search_run(candidates.decode(stored) if stored else None, acc.run,
                                             acc.mean, acc.n_slices, acc.sample_rate_hz,
                                             acc.latest_file_index, acc.n_files, settings)
        value = candidates.encode(doc)
    except ValueError as exc:  # a spectrum the search cannot use: say so, keep folding
        log.warning("candidate search of run %s after file %d failed: %s", acc.run,
                    acc.latest_file_index, exc)
        return
    candidates_table[key] = value
    context = {k: doc[k] for k in ("run", "searched_file_index", "n_files", "n_slices",
                                   "threshold_sigma", "local_threshold_sigma")}
    for record in changed:
        await candidates_topic.send(key=key, value=candidates.encode({**context, **record}))


@app.page("/quax/runs/{run}/candidates/")
class RunCandidatesView(View):
    """The run's candidates: frequency (Hz, plus the LO), significance, power, first seen file..."""

    @app.table_route(table=runs_table, match_info="run")
    async def get(self, request: Request, run: str) -> Response:
        stored = candidates_table.get(run.encode())
        if stored:
            return self.json(candidates.decode(stored))
        if _run(run) is None:
            return self.json({"error": f"no run {run!r}"}, status=404)
        return self.json(candidates.empty_document(run, settings))

# End of the candidate-search section.
# ---------------------------------------------------------------------------------------------
# Read-only web views (JSON). Run data lives on the worker owning the single `runs` partition;
# any worker routes the request there.

def _run(run: str) -> RunAccumulator | None:
    stored = runs_table.get(run.encode())
    return RunAccumulator.from_bytes(stored) if stored else None


def _file(run: str, file_index: int) -> wire.FileSpectrum | None:
    stored = file_spectra_table.get(wire.file_key(run, file_index))
    return wire.decode_file_spectrum(stored) if stored else None


@app.page("/quax/runs/")
class RunsView(View):
    @app.table_route(table=runs_table, exact_key="runs")
    async def get(self, request: Request) -> Response:
        runs = [views.run_summary(RunAccumulator.from_bytes(value)) for _, value in runs_table.items()]
        return self.json({"runs": sorted(runs, key=lambda r: r["run"])})


@app.page("/quax/runs/{run}/")
class RunView(View):
    @app.table_route(table=runs_table, match_info="run")
    async def get(self, request: Request, run: str) -> Response:
        acc = _run(run)
        if acc is None:
            return self.json({"error": f"no run {run!r}"}, status=404)
        return self.json(views.run_document(acc, settings.lo_frequency_hz))


@app.page("/quax/runs/{run}/files/")
class RunFilesView(View):
    """A run's finished files; ``?start=K&limit=N&spectra=1`` pages and adds mean/std."""

    @app.table_route(table=runs_table, match_info="run")
    async def get(self, request: Request, run: str) -> Response:
        acc = _run(run)
        if acc is None:
            return self.json({"error": f"no run {run!r}"}, status=404)
        try:
            start = int(request.query.get("start", 0))
            limit = min(int(request.query.get("limit", 100)), 1000)
        except ValueError:
            return self.json({"error": "start and limit must be integers"}, status=400)
        with_spectra = request.query.get("spectra", "0") in {"1", "true", "yes"}
        indices = [i for i in acc.files if i >= start][:limit]
        files = [views.file_document(spec, with_spectrum=with_spectra)
                 for spec in (_file(run, i) for i in indices) if spec is not None]
        return self.json({"run": run, "n_files": acc.n_files, "files": files})


@app.page("/quax/runs/{run}/files/{file_index}/")
class FileView(View):
    @app.table_route(table=runs_table, match_info="run")
    async def get(self, request: Request, run: str, file_index: str) -> Response:
        index = _latest_or_int(run, file_index)
        spec = _file(run, index) if index is not None else None
        if spec is None:
            return self.json({"error": f"no finished file {file_index} in run {run!r}"}, status=404)
        return self.json({**views.file_document(spec), "frequency_hz": views.floats(
            dsp.frequency_axis_hz(spec.slice_len, spec.sample_rate_hz, settings.lo_frequency_hz))})


def _latest_or_int(run: str, file_index: str) -> int | None:
    if file_index == "latest":
        acc = _run(run)
        return acc.latest_file_index if acc is not None and acc.n_files else None
    try:
        return int(file_index)
    except ValueError:
        return None


@app.page("/quax/files/")
class FileStateView(View):
    """A file's live accumulation state: ``?key=RUN/0000000012`` (routed to the worker owning it)."""

    @app.table_route(table=files_table, query_param="key")
    async def get(self, request: Request) -> Response:
        stored = files_table.get(request.query["key"].encode())
        if stored is None:
            return self.json({"error": f"no file {request.query['key']!r} in the files table"}, status=404)
        acc = FileAccumulator.from_bytes(stored)
        return self.json({"run": acc.run, "file_index": acc.file_index, "status": acc.status,
                          "n_counted": acc.n_counted, "slices_in_file": acc.slices_in_file,
                          "duplicate_slices": acc.duplicate_slices,
                          "uncounted": [int(i) for i in (~acc.counted).nonzero()[0][:100]]})


@app.page("/quax/health/")
class HealthView(View):
    """This worker: its assigned partitions and counters (not routed)."""

    async def get(self, request: Request) -> Response:
        assignment = sorted(f"{tp.topic}/{tp.partition}" for tp in app.consumer.assignment()) \
            if app.consumer else []
        return self.json({
            "worker": app.conf.canonical_url.human_repr() if app.conf.canonical_url else None,
            "status": "ok", "time_s": time.time(), "assigned": assignment,
            "slices_total": metrics.SLICES._value.get(),
            "files_completed_total": metrics.FILES_COMPLETED._value.get(),
        })


@app.page("/metrics")
class MetricsView(View):
    async def get(self, request: Request) -> Response:
        return self.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])
