"""The Faust app of one worker, top-down: topics, tables, agents, timers and web views.

    run-metadata (1 partition, key run) --record_metadata--> table run_metadata
    slices (4 partitions, key run/file) --transform_slices--> table files   (per-file running sums)
                                                     \\-----> spectra (1 partition, key run)
    spectra --fold_spectra--> table runs          (run-wide average, files folded)
                         \\--> table file_spectra  (each finished file's mean and std)
                         \\--> table candidates, topic candidates (search of the new average)

``create_app(settings)`` builds it and does nothing else: it reads no environment and patches no
library. The worker command (stream/worker.py) tunes malloc and installs the Faust patches first.
What the agents do with an event is in agents.py, the periodic work in upkeep.py, the views in web.py.
"""

from __future__ import annotations

import functools

import faust
from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor
from prometheus_client import REGISTRY

from quax_faust.settings import Settings
from quax_faust import connection, fetch_reads, record_crc
from quax_faust.stream import agents, table_store, upkeep, web
from quax_faust.stream.chain import Chain

RAW = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}


def create_app(settings: Settings) -> faust.App:
    """The worker's app: topics, tables (RocksDB, one memory budget per worker), agents, timers and
    web views, all configured from ``settings``."""
    record_crc.install()  # the consumers' CRC32C check, in hardware: broker_check_crcs=False below
    fetch_reads.install()  # fetch responses read in large pieces, without a pause per piece
    app = faust.App(settings.app_id,
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
                    web_host=settings.web_host, web_bind=settings.web_host,
                    consumer_auto_offset_reset="earliest",
                    broker_check_crcs=False)  # checked by record_crc instead (installed above)
    # Faust's own sensor (faust_*: events, commits, rebalances; its latencies are in ms) joins our
    # quax_* metrics on /metrics (docs/metrics.md).
    app.monitor = PrometheusMonitor(metrics=_faust_metrics())

    # Every table database of this worker shares one memtable budget and one block cache
    # (table_store.py), so the tables' memory is bounded whatever the run length.
    table = {"key_type": bytes, "value_type": bytes, "options": {
        "write_buffer_size": 8 << 20, "max_write_buffer_number": 2, "target_file_size_base": 16 << 20,
        "memtable_budget_bytes": settings.table_memtable_budget_bytes,
        "block_cache_budget_bytes": settings.table_block_cache_budget_bytes}}
    chain = Chain(
        settings=settings, app=app,
        slices_topic=app.topic(settings.slices_topic, partitions=settings.partitions, **RAW),
        spectra_topic=app.topic(settings.spectra_topic, partitions=1, **RAW),
        rejected_topic=app.topic(f"{settings.slices_topic}.rejected", partitions=1, **RAW),
        candidates_topic=app.topic(settings.candidates_topic, partitions=1, **RAW),
        metadata_topic=app.topic(settings.metadata_topic, partitions=1, **RAW),
        files=app.Table("files", partitions=settings.partitions, **table),
        runs=app.Table("runs", partitions=1, **table),
        file_spectra=app.Table("file_spectra", partitions=1, **table),
        candidates=app.Table("candidates", partitions=1, **table),
        run_metadata=app.Table("run_metadata", partitions=1, **table),
    ).attach()

    @app.agent(chain.slices_topic, name="transform_slices")
    async def transform_slices(stream):
        """Decode slice batches, FFT them, fold them into their file; publish each finished file."""
        async for event in stream.events():
            await agents.on_slice_batch(chain, event)

    @app.agent(chain.spectra_topic, name="fold_spectra")
    async def fold_spectra(stream):
        """Fold each finished file into its run's average, once; keep it; search the run."""
        async for event in stream.events():
            await agents.on_file_spectrum(chain, event)

    @app.agent(chain.metadata_topic, name="record_metadata")
    async def record_metadata(stream):
        """Keep each run's metadata (written by the producer) in the run_metadata table."""
        async for event in stream.events():
            await agents.on_run_metadata(chain, event)

    @app.task
    async def plan_fft():
        await upkeep.plan_fft(chain)

    @app.timer(interval=max(settings.heap_trim_interval_s, 1.0), name="bound_memory")
    async def bound_memory():
        await upkeep.bound_memory(chain)

    @app.timer(interval=2.0, name="reread_skipped_offsets")
    async def reread_skipped_offsets():
        await upkeep.reread_skipped_offsets(chain)

    @app.timer(interval=settings.consumer_lag_interval_s, name="export_consumer_lag")
    async def export_consumer_lag():
        await upkeep.export_consumer_lag(chain)

    web.blueprint.register(app)
    return app


@functools.cache
def _faust_metrics() -> FaustMetrics:
    """Faust's metrics, registered once per process in the default registry."""
    return FaustMetrics.create(REGISTRY, "faust")
