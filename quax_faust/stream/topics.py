"""Our topics: their partition counts and configs (what each keeps, for how long), created or fixed.

Faust creates only its own changelog topics; ``slices``, ``spectra``, the dead-letter topic and
``candidates`` are ours. A topic that exists with another partition count is an error (a file's slices
would not land where its table lives); one whose configs differ from the plan is altered to it and
the change is logged. What each topic keeps, and why (docs/usage.md, "Topics and retention"):

- ``slices``: the raw samples, 16 MB/s at 2 MS/s; kept ``slices_retention_s`` (7 days), long enough
  to re-run the chain or Spark on recent data. The broker's byte cap per partition still applies.
- ``spectra``: each file's spectrum, the science product: kept forever (time and size). Not
  compacted: its key is the run and it holds one record per file, so compaction would keep only
  each run's last file.
- ``slices.rejected``: dead letters, whole slice messages with the reason; kept 30 days.
- ``candidates``: one record per new, updated or dropped candidate, key the run: kept forever (under
  a kB per record) and not compacted, which would keep only the last change of each run and lose its
  other candidates. A run's current candidates are in the ``candidates`` table (compacted changelog).
- ``run-metadata``: one record per run (key the run) holding all its metadata, rewritten whole when a
  field is added: compacted, so it keeps each run's latest record, forever.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAlreadyExistsError

from quax_faust.connection import connect_admin, existing_partition_counts
from quax_faust.settings import Settings

log = logging.getLogger(__name__)

DAY_S = 86_400
DEAD_LETTER_RETENTION_S = 30 * DAY_S
"""Long enough to look at a rejected message after a holiday (the rejection counter alerts at once);
bounded because each is a whole slice message (3 MiB) and a misconfigured producer could send
nothing but rejects. The DAQ files themselves can always be sent again."""
KEPT_FOREVER = {"retention.ms": "-1", "retention.bytes": "-1"}
"""Both: the broker's byte cap per partition (500 GiB in ops/kafka) would delete old records too."""
DYNAMIC_TOPIC_CONFIG = 1
"""DescribeConfigs' config_source of a config set on the topic itself (not a broker default)."""
NOT_AUTHORIZED = {29, 31}  # TOPIC_ / CLUSTER_AUTHORIZATION_FAILED
TOPIC_ALREADY_EXISTS = 36


@dataclass(frozen=True)
class TopicSpec:
    partitions: int
    configs: dict[str, str] = field(default_factory=dict)
    """Topic-level Kafka configs, values as the broker spells them."""


def daq_bytes_per_s(sample_rate_hz: float) -> float:
    """Bytes per second of DAQ data, i and q as float32 (= complex64 on the slices topic)."""
    return 2 * 4 * sample_rate_hz


def retention_ms(seconds: float, name: str) -> str:
    if seconds == -1:
        return "-1"
    if not seconds > 0:
        raise ValueError(f"setting {name}: {seconds!r} must be > 0 seconds, or -1 to keep forever")
    return str(round(seconds * 1000))


def topic_plan(settings: Settings) -> dict[str, TopicSpec]:
    """Topic name -> partition count and configs. A new topic is one more line here."""
    common = {"cleanup.policy": "delete", "max.message.bytes": str(settings.max_message_bytes)}
    return {
        settings.slices_topic: TopicSpec(settings.partitions, {
            **common, "retention.ms": retention_ms(settings.slices_retention_s, "slices_retention_s")}),
        settings.spectra_topic: TopicSpec(1, {**common, **KEPT_FOREVER}),
        f"{settings.slices_topic}.rejected": TopicSpec(1, {
            **common, "retention.ms": retention_ms(DEAD_LETTER_RETENTION_S, "dead-letter retention")}),
        settings.candidates_topic: TopicSpec(1, {**common, **KEPT_FOREVER}),
        settings.metadata_topic: TopicSpec(1, {**common, **KEPT_FOREVER, "cleanup.policy": "compact"}),
    }


def changelog_plan(app) -> dict[str, TopicSpec]:
    """The Faust app's table changelog topics as Faust would create them (compacted, one partition
    per table partition). Created before the workers subscribe: a worker whose consumer asked for
    the cluster's metadata a moment before another worker's Faust created them took them as
    missing, and its tables failed with PartitionsMismatch (a changelog of 0 partitions) until its
    metadata was next refreshed, minutes later (fresh-clone run 24)."""
    plan = {}
    for table in app.tables.values():
        topic = table.changelog_topic
        plan[topic.get_topic_name()] = TopicSpec(topic.partitions, {"cleanup.policy": "compact"})
    return plan


async def ensure_topics(settings: Settings, wait_s: float = 90.0,
                        extra: dict[str, TopicSpec] | None = None) -> dict[str, TopicSpec]:
    """Create missing topics (ours, and ``extra``: e.g. changelog_plan) and fix the configs of
    existing ones; raise RuntimeError if one exists with the wrong partition count. Returns each
    topic's partitions and all its configs, read back, once every one is described."""
    plan = {**topic_plan(settings), **(extra or {})}
    admin = await connect_admin(settings, wait_s)
    try:
        existing = await existing_partition_counts(admin, plan)
        missing = [NewTopic(name, spec.partitions, settings.replication_factor, topic_configs=spec.configs)
                   for name, spec in plan.items() if name not in existing]
        if missing:
            try:
                errors = (await admin.create_topics(missing)).to_object()["topic_errors"]
            except TopicAlreadyExistsError:
                errors = []  # another process created it first
            for error in errors:  # a refused config would otherwise show only as a missing topic
                if error["error_code"] not in (0, TOPIC_ALREADY_EXISTS):
                    raise RuntimeError(f"creating topic {error['topic']!r} failed: error "
                                       f"{error['error_code']} {error.get('error_message') or ''}")
            log.info("created topics %s", ", ".join(t.name for t in missing))
        # A new topic's metadata takes a moment to show everywhere (another worker may have just
        # created it): wait for every planned topic to be described.
        deadline = time.monotonic() + 30
        while True:
            existing = await existing_partition_counts(admin, plan)
            if set(plan) <= set(existing) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        for name, spec in plan.items():
            if existing.get(name) != spec.partitions:
                raise RuntimeError(f"topic {name!r} has {existing.get(name)} partitions, expected "
                                   f"{spec.partitions}; delete it or change QUAX_PARTITIONS")
        configs = await _fix_configs(admin, plan)
    finally:
        await admin.close()
    return {name: TopicSpec(existing[name], configs.get(name, {})) for name in plan}


UNKNOWN_TOPIC = 3
"""UNKNOWN_TOPIC_OR_PARTITION: on a cluster, a broker that has not yet learned of a topic just
created (the describe may go to another broker than the one that listed it)."""


async def describe_topic_configs(admin: AIOKafkaAdminClient, names, wait_s: float = 30.0) -> dict[str, dict[str, dict]]:
    """Topic -> config name -> {"value", "source"} as the broker has them; a topic the broker
    refuses to describe (not authorized) is left out with a warning. A topic a broker does not
    know yet is asked again for up to ``wait_s`` seconds."""
    deadline = time.monotonic() + wait_s
    described: dict[str, dict[str, dict]] = {}
    pending = list(names)
    while pending:
        unknown = await _describe_configs(admin, pending, described, last_try=time.monotonic() > deadline)
        if unknown:
            await asyncio.sleep(0.2)
        pending = unknown
    return described


async def _describe_configs(admin: AIOKafkaAdminClient, names: list[str], described: dict,
                            last_try: bool) -> list[str]:
    """One DescribeConfigs of ``names`` into ``described``; the names a broker did not know yet
    (unless ``last_try``: then that is an error too)."""
    resources = [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
    unknown = []
    for response in await admin.describe_configs(resources):
        for resource in response.to_object()["resources"]:
            name = resource["resource_name"]
            if resource["error_code"] in NOT_AUTHORIZED:
                log.warning("may not read the configs of topic %s (%s); left as they are", name,
                            resource["error_message"])
                continue
            if resource["error_code"] == UNKNOWN_TOPIC and not last_try:
                unknown.append(name)
                continue
            if resource["error_code"]:
                raise RuntimeError(f"describing the configs of topic {name!r} failed: error "
                                   f"{resource['error_code']} {resource['error_message']}")
            described[name] = {
                e["config_names"]: {"value": e["config_value"],
                                    # DescribeConfigs v0 has is_default instead of config_source
                                    "source": e.get("config_source",
                                                    0 if e.get("is_default") else DYNAMIC_TOPIC_CONFIG)}
                for e in resource["config_entries"]}
    return unknown


async def _fix_configs(admin: AIOKafkaAdminClient, plan: dict[str, TopicSpec]) -> dict[str, dict[str, str]]:
    """Alter every topic whose configs differ from the plan; the configs as the broker has them now."""
    described = await describe_topic_configs(admin, plan)
    changes = []
    for name, entries in described.items():
        wrong = {k: v for k, v in plan[name].configs.items() if entries.get(k, {}).get("value") != v}
        if not wrong:
            continue
        # AlterConfigs (the only alter aiokafka 0.14 has) replaces all of a topic's own configs:
        # send back those set on the topic that the plan does not name, unchanged.
        own = {k: e["value"] for k, e in entries.items()
               if e["source"] == DYNAMIC_TOPIC_CONFIG and e["value"] is not None}
        changes.append(ConfigResource(ConfigResourceType.TOPIC, name, {**own, **plan[name].configs}))
        log.warning("topic %s: configs fixed to the plan (docs/usage.md, Topics and retention): %s", name,
                    ", ".join(f"{k} {entries.get(k, {}).get('value')} -> {v}" for k, v in wrong.items()))
    if changes:
        for response in await admin.alter_configs(changes):
            for resource in response.to_object()["resources"]:
                if resource["error_code"] in NOT_AUTHORIZED:
                    log.warning("may not alter the configs of topic %s (%s); left as they are",
                                resource["resource_name"], resource["error_message"])
                elif resource["error_code"]:
                    raise RuntimeError(f"altering the configs of topic {resource['resource_name']!r} "
                                       f"failed: error {resource['error_code']} {resource['error_message']}")
        described = await describe_topic_configs(admin, plan)
    return {name: {k: e["value"] for k, e in entries.items()} for name, entries in described.items()}


def describe_plan(settings: Settings, topics: dict[str, TopicSpec]) -> list[str]:
    """What `quax topics` prints: each topic's partitions and planned configs as the broker has them,
    and the disk the slices retention costs."""
    plan = topic_plan(settings)
    lines = [f"{name}: {spec.partitions} partitions; "
             + ", ".join(f"{k}={spec.configs.get(k, '?')}" for k in plan[name].configs)
             for name, spec in topics.items()]
    rate = daq_bytes_per_s(settings.sample_rate_hz)
    copies = f"x {settings.replication_factor} replicas" if settings.replication_factor > 1 else "one replica"
    kept_s = settings.slices_retention_s
    if kept_s == -1:
        lines.append(f"{settings.slices_topic} kept forever: {rate / 1e6:.0f} MB/s of DAQ data, "
                     f"{rate * DAY_S * settings.replication_factor / 1e9:.0f} GB of disk per day ({copies})")
        return lines
    lines.append(f"{settings.slices_topic} retention {_duration(kept_s)} x {rate / 1e6:.0f} MB/s of DAQ "
                 f"data = {rate * kept_s * settings.replication_factor / 1e9:.0f} GB of disk ({copies})")
    slices = topics.get(settings.slices_topic)
    cap = slices.configs.get("retention.bytes", "-1") if slices else "-1"
    if cap != "-1" and int(cap) * slices.partitions < rate * kept_s:  # a cap per partition (replica)
        lines.append(f"  but the byte cap retention.bytes={cap} per partition keeps only "
                     f"{int(cap) * slices.partitions / rate / 3600:.1f} h: raise the broker's "
                     "KAFKA_RETENTION_BYTES or set the topic's retention.bytes")
    return lines


def _duration(seconds: float) -> str:
    return (f"{seconds / DAY_S:.3g} days" if seconds >= DAY_S else f"{seconds / 3600:.3g} h" if seconds >= 3600
            else f"{seconds / 60:.3g} min")
