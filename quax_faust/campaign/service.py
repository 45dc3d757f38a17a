"""``quax campaign-live``: the consumer loop, the web server and the metrics of the live campaign.

Why a consumer of the ``spectra`` topic, not a table on the workers: a campaign needs every run,
and the workers' run tables are spread over their partitions; the spectra topic holds every
finished file in one partition, in order, forever, so one reader sees the whole campaign and
rebuilds it after any crash without touching the workers, whose CPU is the chain's bottleneck.
The analysis runs once per batch of new files (at most every ``campaign_refresh_s``); each update
recomputes only the runs that changed (search.live_grand).

Web (``web_host:campaign_port``): ``/campaign/`` the document (campaign/document.py; 503 until the
first analysis), ``/campaign/health`` the loop's state, ``/metrics`` Prometheus (docs/metrics.md).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from aiohttp import web
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from quax_faust import connection, record_crc
from quax_faust.campaign import snapshot
from quax_faust.campaign.document import campaign_document
from quax_faust.campaign.state import CampaignState, Goal
from quax_faust.search.run_excess import CampaignConfig
from quax_faust.settings import Settings

log = logging.getLogger("quax.campaign")
FETCH_BYTES = 32 << 20
"""Bytes one fetch may bring (a spectrum record is ~50 kB at 3072 bins): catching up is fast."""

REGISTRY = CollectorRegistry()
FILES = Counter("quax_campaign_files_folded", "Files folded into the live campaign's runs", registry=REGISTRY)
ANALYSIS = Histogram("quax_campaign_analysis_seconds", "Time of one update of the live campaign's analysis",
                     buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5), registry=REGISTRY)
RUNS = Gauge("quax_campaign_runs", "Runs of the live campaign, used by the physics or left out", ["state"],
             registry=REGISTRY)
CANDIDATES = Gauge("quax_campaign_candidates", "Candidates on the live campaign's rescan list", registry=REGISTRY)
BEST = Gauge("quax_campaign_best_limit_over_ksvz", "Lowest exclusion limit over the band, in units of KSVZ",
             registry=REGISTRY)
LAG = Gauge("quax_campaign_lag_records", "Records of a topic not yet folded", ["topic"], registry=REGISTRY)
REJECTED = Gauge("quax_campaign_rejected_records", "Records the live campaign rejected", ["topic", "reason"],
                 registry=REGISTRY)
UPDATED = Gauge("quax_campaign_last_update_timestamp_seconds", "When the live campaign was last analysed",
                registry=REGISTRY)


class CampaignService:
    """The state, the latest document, and the loop that keeps them up to date."""

    def __init__(self, settings: Settings, state: CampaignState):
        self.settings, self.state = settings, state
        self.document: bytes | None = None
        self.version = 0
        self.lag: dict[str, int] = {}
        self.path = snapshot.snapshot_path(settings.var_dir, settings.app_id)

    def analyse(self) -> None:
        """Update the analysis with the runs that changed; publish the document and the metrics."""
        started = time.perf_counter()
        c = self.state.analyse()
        elapsed = time.perf_counter() - started
        self.version += 1
        doc = campaign_document(c, self.state, version=self.version, updated_at_s=time.time(), analysis_s=elapsed)
        self.document = json.dumps(doc, allow_nan=False).encode()
        ANALYSIS.observe(elapsed)
        RUNS.labels("used").set(len(c.grand.runs))
        RUNS.labels("left_out").set(len(c.grand.left_out))
        CANDIDATES.set(len(c.entries))
        BEST.set(doc["best_limit"].get("limit_over_ksvz") or float("nan"))
        UPDATED.set(time.time())
        for (role, reason), n in self.state.rejected.items():
            REJECTED.labels(role, reason).set(n)
        log.info("live campaign v%d: %d runs used, %d left out, %d candidates, %d files folded (%.0f ms)",
                 self.version, len(c.grand.runs), len(c.grand.left_out), len(c.entries),
                 self.state.files_folded, 1e3 * elapsed)

    # --- the consumer loop ------------------------------------------------------------------------------

    async def consume(self, stop: asyncio.Event) -> None:
        s = self.settings
        topics = {"spectra": TopicPartition(s.spectra_topic, 0), "metadata": TopicPartition(s.metadata_topic, 0)}
        await wait_for_topics(s, [tp.topic for tp in topics.values()], stop)
        if stop.is_set():  # stopped while waiting for the chain
            return
        consumer = AIOKafkaConsumer(**connection.client_options(s), enable_auto_commit=False,
                                    max_partition_fetch_bytes=FETCH_BYTES, fetch_max_bytes=FETCH_BYTES,
                                    **record_crc.consumer_options())
        try:
            await consumer.start()
            consumer.assign(list(topics.values()))
            ends = await consumer.end_offsets(list(topics.values()))
            for role, tp in topics.items():
                start = self.state.next_offsets.get(role, 0)
                if start > ends[tp]:
                    raise RuntimeError(f"{self.path}: its {tp.topic} offset {start} lies beyond the topic's end "
                                       f"{ends[tp]} (a new broker or topic?): delete it to rebuild the campaign")
                consumer.seek(tp, start)
            log.info("live campaign: reading %s from offset %d, %s from %d (%d runs kept)", s.spectra_topic,
                     self.state.next_offsets["spectra"], s.metadata_topic, self.state.next_offsets["metadata"],
                     len(self.state.runs))
            await self._loop(consumer, topics, stop)
        finally:
            await consumer.stop()

    async def _loop(self, consumer, topics, stop: asyncio.Event) -> None:
        s = self.settings
        analysed_at = saved_at = 0.0
        saved_offsets = dict(self.state.next_offsets)
        published: dict[str, int] | None = None  # the offsets of the served document (None: nothing served)
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=200, max_records=500)
            for record in batch.get(topics["metadata"], []):  # metadata first: a run's cavity with its files
                self.state.record_metadata(record.offset, record.key, record.value)
            for record in batch.get(topics["spectra"], []):
                if self.state.fold_spectrum(record.offset, record.key, record.value):
                    FILES.inc()
            now = time.monotonic()
            # Every record moves the offsets (a rejected or repeated one too): re-analyse after any.
            if self.state.next_offsets != published and now - analysed_at >= s.campaign_refresh_s:
                ends = await consumer.end_offsets(list(topics.values()))
                self.lag = {tp.topic: ends[tp] - self.state.next_offsets[role] for role, tp in topics.items()}
                for topic, lag in self.lag.items():
                    LAG.labels(topic).set(lag)
                self.analyse()
                analysed_at, published = now, dict(self.state.next_offsets)
            if now - saved_at >= s.campaign_snapshot_s and self.state.next_offsets != saved_offsets:
                self.save()
                saved_at, saved_offsets = now, dict(self.state.next_offsets)

    def save(self) -> None:
        size = snapshot.save(self.state, self.path)
        log.info("live campaign: state saved to %s (%.1f MB, spectra offset %d)", self.path, size / 1e6,
                 self.state.next_offsets["spectra"])

    # --- the web server ---------------------------------------------------------------------------

    def web_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/campaign/", self._document)
        app.router.add_get("/campaign/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def _document(self, request: web.Request) -> web.Response:
        if self.document is None:
            return web.json_response({"status": "starting", "files_folded": self.state.files_folded}, status=503)
        return web.Response(body=self.document, content_type="application/json")

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"version": self.version, "files_folded": self.state.files_folded,
                                  "runs": len(self.state.runs), "lag_records": self.lag,
                                  "next_offsets": self.state.next_offsets})

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def wait_for_topics(settings: Settings, names: list[str], stop: asyncio.Event) -> None:
    """Return once every topic exists (the chain creates them); say so while waiting."""
    said = False
    while not stop.is_set():
        try:
            found = await connection.partition_counts(settings, names, wait_s=2.0)  # a stop waits at most this
        except Exception as exc:  # the broker is not up yet: wait, as the workers do
            found, reason = {}, f"{type(exc).__name__}: {exc}"
        else:
            reason = "missing: " + ", ".join(n for n in names if not found.get(n))
        if all(found.get(n) for n in names):
            return
        if not said:
            log.warning("live campaign: waiting for topics %s at %s (%s)", ", ".join(names), settings.broker, reason)
            said = True
        await asyncio.sleep(1.0)


def initial_state(settings: Settings, *, from_beginning: bool) -> CampaignState:
    """The saved state, or a new one (``from_beginning``: ignore the snapshot)."""
    goal = Goal(settings.campaign_target_significance, settings.campaign_detection_probability)
    path = snapshot.snapshot_path(settings.var_dir, settings.app_id)
    pattern = settings.campaign_runs
    state = None if from_beginning else snapshot.load(path, CampaignConfig(), goal, pattern)
    return state if state is not None else CampaignState(config=CampaignConfig(), goal=goal, runs_pattern=pattern)


async def serve(settings: Settings, *, from_beginning: bool = False, stop: asyncio.Event | None = None) -> None:
    """Run the live campaign until ``stop`` is set (the command sets it on SIGTERM / Ctrl-C)."""
    stop = stop or asyncio.Event()
    service = CampaignService(settings, initial_state(settings, from_beginning=from_beginning))
    runner = web.AppRunner(service.web_app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.web_host, settings.campaign_port).start()
    log.info("live campaign: serving %s/campaign/ (state %s)", settings.campaign_url, service.path)
    try:
        await service.consume(stop)
    finally:
        service.save()
        await runner.cleanup()
