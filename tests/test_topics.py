"""Our topics keep what they must: spectra and candidates forever and never compacted, slices for
slices_retention_s, dead letters 30 days. Read back from a real broker, for fresh topics and for
topics that existed with wrong configs."""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiokafka.admin import NewTopic

from quax_faust.connection import connect_admin, existing_partition_counts
from quax_faust.settings import Settings
from quax_faust.stream.topics import (DAY_S, TopicSpec, changelog_plan, daq_bytes_per_s, describe_plan,
                                      describe_topic_configs, ensure_topics, topic_plan)
from tests.conftest import stack_settings

WEEK_MS = str(7 * DAY_S * 1000)


def test_the_plan_keeps_the_science_product_forever_and_compacts_only_the_run_metadata():
    s = Settings()
    plan = topic_plan(s)
    assert {name: spec.partitions for name, spec in plan.items()} == {
        "slices": 4, "spectra": 1, "slices.rejected": 1, "candidates": 1, "run-metadata": 1}
    for name in ("spectra", "candidates", "run-metadata"):
        assert plan[name].configs["retention.ms"] == plan[name].configs["retention.bytes"] == "-1"
    # spectra and candidates: keyed by run, many records per run, never compacted; run-metadata
    # holds a run's whole metadata in each record: its newest is all there is to keep.
    assert {name: spec.configs["cleanup.policy"] for name, spec in plan.items()} == {
        "slices": "delete", "spectra": "delete", "slices.rejected": "delete", "candidates": "delete",
        "run-metadata": "compact"}
    assert plan["slices"].configs["retention.ms"] == WEEK_MS and "retention.bytes" not in plan["slices"].configs
    assert plan["slices.rejected"].configs["retention.ms"] == str(30 * DAY_S * 1000)
    assert {spec.configs["max.message.bytes"] for spec in plan.values()} == {str(16 << 20)}


def test_slices_retention_is_a_setting():
    assert topic_plan(Settings(slices_retention_s=3600))["slices"].configs["retention.ms"] == "3600000"
    assert topic_plan(Settings(slices_retention_s=-1))["slices"].configs["retention.ms"] == "-1"
    with pytest.raises(ValueError, match="slices_retention_s: 0 must be > 0 seconds, or -1"):
        topic_plan(Settings(slices_retention_s=0))


def test_quax_topics_prints_the_disk_the_slices_retention_costs():
    s = Settings()
    assert daq_bytes_per_s(s.sample_rate_hz) == 16e6  # 2 channels x float32 x 2 MS/s
    broker_has = {name: TopicSpec(spec.partitions, {**spec.configs, "retention.bytes": "-1"})
                  for name, spec in topic_plan(s).items()}
    lines = describe_plan(s, broker_has)
    assert lines[1] == ("spectra: 1 partitions; cleanup.policy=delete, max.message.bytes=16777216, "
                        "retention.ms=-1, retention.bytes=-1")
    assert lines[-1] == "slices retention 7 days x 16 MB/s of DAQ data = 9677 GB of disk (one replica)"
    assert 16e6 * 7 * 86400 / 1e9 == pytest.approx(9676.8)
    # The broker's default byte cap (ops/kafka: 500 GiB per partition) keeps less than 7 days.
    broker_has["slices"].configs["retention.bytes"] = str(500 << 30)
    *_, cost, cap = describe_plan(s, broker_has)
    assert cap.startswith(f"  but the byte cap retention.bytes={500 << 30} per partition keeps only 37.3 h")
    assert (500 << 30) * 4 / 16e6 / 3600 == pytest.approx(37.3, abs=0.05)
    short = describe_plan(s.replace(slices_retention_s=600), broker_has)[-1]  # the demo's
    assert short == "slices retention 10 min x 16 MB/s of DAQ data = 10 GB of disk (one replica)"
    forever = describe_plan(s.replace(slices_retention_s=-1, replication_factor=3), broker_has)[-1]
    assert forever == "slices kept forever: 16 MB/s of DAQ data, 4147 GB of disk per day (x 3 replicas)"


async def _configs(settings: Settings, names) -> dict[str, dict[str, str]]:
    admin = await connect_admin(settings, 30)
    try:
        described = await describe_topic_configs(admin, names)
    finally:
        await admin.close()
    return {name: {k: e["value"] for k, e in entries.items()} for name, entries in described.items()}


def _assert_as_planned(settings: Settings, configs: dict[str, dict[str, str]]) -> None:
    for name, spec in topic_plan(settings).items():
        assert {k: configs[name][k] for k in spec.configs} == spec.configs, name


@pytest.mark.broker
def test_fresh_topics_have_the_planned_configs_on_the_broker(broker, tmp_path):
    settings = stack_settings(broker, tmp_path, slices_retention_s=2 * DAY_S)
    returned = asyncio.run(ensure_topics(settings, wait_s=30))
    on_broker = asyncio.run(_configs(settings, topic_plan(settings)))
    _assert_as_planned(settings, on_broker)
    assert on_broker[settings.slices_topic]["retention.ms"] == str(2 * DAY_S * 1000)
    assert on_broker[settings.spectra_topic]["cleanup.policy"] == "delete"
    assert {name: spec.configs for name, spec in returned.items()} == on_broker
    assert {name: spec.partitions for name, spec in returned.items()} == {
        name: spec.partitions for name, spec in topic_plan(settings).items()}


@pytest.mark.broker
def test_existing_topics_with_wrong_configs_are_fixed_and_reported(broker, tmp_path, caplog):
    settings = stack_settings(broker, tmp_path)
    wrong = {  # what a broker default or a hand-made topic gives: the 7-day default, compaction
        settings.spectra_topic: {"cleanup.policy": "compact", "retention.ms": WEEK_MS,
                                 "segment.ms": "3600000"},  # an operator's own config: kept
        settings.candidates_topic: {"cleanup.policy": "compact"},
        settings.slices_topic: {"retention.ms": str(DAY_S * 1000), "max.message.bytes": "1048576"},
    }

    async def create_wrong():
        admin = await connect_admin(settings, 30)
        try:
            await admin.create_topics([NewTopic(name, topic_plan(settings)[name].partitions, 1,
                                                topic_configs=configs) for name, configs in wrong.items()])
            for _ in range(100):  # until the broker describes them (a new topic takes a moment)
                if set(await existing_partition_counts(admin, wrong)) == set(wrong):
                    break
                await asyncio.sleep(0.1)
        finally:
            await admin.close()

    asyncio.run(create_wrong())
    assert asyncio.run(_configs(settings, wrong))[settings.spectra_topic]["cleanup.policy"] == "compact"
    with caplog.at_level(logging.WARNING, logger="quax_faust.stream.topics"):
        asyncio.run(ensure_topics(settings, wait_s=30))
    on_broker = asyncio.run(_configs(settings, topic_plan(settings)))
    _assert_as_planned(settings, on_broker)
    assert on_broker[settings.spectra_topic]["segment.ms"] == "3600000"
    fixed = [r.getMessage() for r in caplog.records if "configs fixed" in r.getMessage()]
    assert len(fixed) == 3, fixed
    (spectra,) = [m for m in fixed if m.startswith(f"topic {settings.spectra_topic}:")]
    assert "cleanup.policy compact -> delete" in spectra and f"retention.ms {WEEK_MS} -> -1" in spectra
    # Once fixed, a second pass changes nothing and says nothing.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="quax_faust.stream.topics"):
        asyncio.run(ensure_topics(settings, wait_s=30))
    assert not [r for r in caplog.records if "configs fixed" in r.getMessage()]


@pytest.mark.broker
def test_a_wrong_partition_count_is_still_an_error(broker, tmp_path):
    settings = stack_settings(broker, tmp_path)
    asyncio.run(ensure_topics(settings, wait_s=30))
    with pytest.raises(RuntimeError, match=rf"topic '{settings.slices_topic}' has 4 partitions, expected 2"):
        asyncio.run(ensure_topics(settings.replace(partitions=2), wait_s=30))



@pytest.mark.broker
def test_the_tables_changelogs_exist_before_a_worker_subscribes(broker, tmp_path):
    """The worker creates its tables' changelog topics as Faust would, before Faust starts: a worker
    whose consumer missed them in its first metadata failed with PartitionsMismatch for minutes."""
    from quax_faust.stream.app import create_app

    settings = stack_settings(broker, tmp_path, partitions=4)
    plan = changelog_plan(create_app(settings))
    assert {name: spec.partitions for name, spec in plan.items()} == {
        f"{settings.app_id}-{table}-changelog": n
        for table, n in (("files", 4), ("runs", 1), ("file_spectra", 1), ("candidates", 1), ("run_metadata", 1))}
    returned = asyncio.run(ensure_topics(settings, wait_s=30, extra=plan))
    for name, spec in plan.items():
        assert returned[name].partitions == spec.partitions
        assert returned[name].configs["cleanup.policy"] == "compact"
    assert set(topic_plan(settings)) <= set(returned)
    asyncio.run(ensure_topics(settings, wait_s=30, extra=plan))  # again: nothing to create, no error


class _Response:
    def __init__(self, resources):
        self.resources = resources

    def to_object(self):
        return {"resources": self.resources}


class _ClusterAdmin:
    """Pure logic: a DescribeConfigs that first goes to a broker which has not yet learned of the
    topic just created (error 3, as seen on the 3-broker cluster of tests/test_scale_out.py)."""

    def __init__(self, unknown_times: int):
        self.unknown_times, self.calls = unknown_times, 0

    async def describe_configs(self, resources):
        self.calls += 1
        known = self.calls > self.unknown_times
        return [_Response([{"resource_name": r.name, "error_code": 0 if known else 3,
                            "error_message": None if known else "This server does not host this topic-partition.",
                            "config_entries": [{"config_names": "retention.ms", "config_value": "1000",
                                                "config_source": 1}] if known else []}
                           for r in resources])]


def test_a_topic_a_broker_does_not_know_yet_is_described_again():
    admin = _ClusterAdmin(unknown_times=2)
    described = asyncio.run(describe_topic_configs(admin, ["slices"], wait_s=5.0))
    assert described == {"slices": {"retention.ms": {"value": "1000", "source": 1}}} and admin.calls == 3
    with pytest.raises(RuntimeError, match="describing the configs of topic 'slices' failed: error 3"):
        asyncio.run(describe_topic_configs(_ClusterAdmin(unknown_times=1000), ["slices"], wait_s=0.5))
