"""The commit rule of quax_faust/faust_fixes.py: only offsets an agent processed are committed.

The pure bookkeeping (ProcessedOffsets) is tested alone; the patch is tested on Faust's own
consumer object (never started, no broker: only its in-memory offsets are exercised), with the
sequence a revocation produces. tests/test_reliability.py runs the whole thing on a real broker.
"""

from __future__ import annotations

import asyncio

import faust
import pytest
from faust.transport.consumer import Consumer
from faust.transport.producer import ProducerBuffer
from faust.types import TP
from faust.types.tuples import ConsumerMessage

from quax_faust import faust_fixes
from quax_faust.faust_fixes import ProcessedOffsets

TOPIC = "slices-guard-test"
TP2 = TP(TOPIC, 2)


def test_in_order_offsets_move_the_commit_point():
    po = ProcessedOffsets()
    po.start(TP2, 10)
    for k in range(10, 14):
        assert po.processed(TP2, k) is None
    assert po.committable(TP2) == 14
    assert po.processed(TP2, 12) is None, "a repeat changes nothing"
    assert po.committable(TP2) == 14


def test_a_skipped_offset_holds_the_commit_point_until_it_is_processed():
    po = ProcessedOffsets()
    po.start(TP2, 10)
    po.processed(TP2, 10)
    assert po.processed(TP2, 13, now=100.0) == (11, 12), "the hole is reported once"
    assert po.processed(TP2, 14, now=101.0) is None
    assert po.committable(TP2) == 11
    assert po.holes(older_than_s=5.0, now=104.0) == {}
    assert po.holes(older_than_s=5.0, now=105.0) == {TP2: (11, 12)}
    po.processed(TP2, 11)
    po.processed(TP2, 12)
    assert po.committable(TP2) == 15
    assert po.holes(older_than_s=0.0, now=200.0) == {}


def test_a_partition_not_started_here_is_never_committed():
    po = ProcessedOffsets()
    po.processed(TP2, 5)
    assert po.committable(TP2) is None
    po.start(TP2, 20)
    po.processed(TP2, 5)  # stale, from before the seek
    assert po.committable(TP2) == 20


def message(offset: int, partition: int = 2) -> ConsumerMessage:
    m = ConsumerMessage(TOPIC, partition, offset, 0.0, 0, None, b"run/0000000001", b"v", None,
                        tp=TP(TOPIC, partition))
    m.refcount = 1  # delivered to one stream
    return m


@pytest.fixture
def consumer():
    """A real (never started) Faust consumer whose conductor acks TOPIC, as after subscribing."""
    async def make():
        app = faust.App("guard-test", broker="kafka://127.0.0.1:1")
        app.topics._acking_topics.add(TOPIC)
        return app.consumer

    return asyncio.run(make())


@pytest.fixture
def installed(monkeypatch):
    """faust_fixes.install(), undone after the test; TOPIC guarded, its count fresh."""
    for cls, name in ((Consumer, "_filter_committable_offsets"), (Consumer, "perform_seek"),
                      (ProducerBuffer, "flush"), (ProducerBuffer, "_send_pending")):
        monkeypatch.setattr(cls, name, getattr(cls, name))  # restored on teardown
    monkeypatch.setattr(faust_fixes, "offsets", ProcessedOffsets())
    faust_fixes.install()
    faust_fixes.guard_topics([TOPIC])


def test_unpatched_faust_commits_past_messages_it_never_processed(consumer):
    """Why the patch exists: Faust 0.15.3 makes a skipped message's offset committable."""
    consumer._committed_offset.pop(TP2, None)  # what on_partitions_revoked does first
    message(40).ack(consumer)  # the stream acks the event it skipped
    assert consumer._filter_committable_offsets({TP2}) == {TP2: 41}  # offsets before 40: lost


def test_a_skipped_message_is_not_committed(consumer, installed):
    faust_fixes.offsets.start(TP2, 30)
    for k in (30, 31):
        m = message(k)
        faust_fixes.note_processed(m)
        m.ack(consumer)
    assert consumer._filter_committable_offsets({TP2}) == {TP2: 32}
    consumer._committed_offset[TP2] = 32  # committed
    consumer._committed_offset.pop(TP2, None)  # the revocation begins
    message(40).ack(consumer)  # skipped, never processed
    assert consumer._filter_committable_offsets({TP2}) == {TP2: 32}, "not 41: 32..39 were never processed"


def test_other_topics_keep_faust_behaviour(consumer, installed):
    faust_fixes.guard_topics(["some-other-topic"])
    consumer._committed_offset[TP2] = 5
    assert message(5).ack(consumer)
    assert consumer._filter_committable_offsets({TP2}) == {TP2: 6}


def test_a_partition_with_messages_waiting_and_no_progress_is_stalled():
    po = ProcessedOffsets()
    po.start(TP2, 5)
    po.processed(TP2, 5, now=100.0)
    assert po.stalled({TP2: 10}, older_than_s=20.0, now=119.0) == {}
    assert po.stalled({TP2: 10}, older_than_s=20.0, now=120.0) == {TP2: (6, 9)}
    assert po.stalled({TP2: 6}, older_than_s=20.0, now=500.0) == {}, "nothing waiting: idle, not stalled"
    for k in range(6, 10):
        po.processed(TP2, k, now=130.0)
    assert po.stalled({TP2: 10}, older_than_s=20.0, now=140.0) == {}


def test_partitions_no_longer_assigned_are_forgotten():
    po = ProcessedOffsets()
    other = TP(TOPIC, 3)
    po.start(TP2, 5)
    po.start(other, 7)
    po.processed(other, 9, now=0.0)  # a hole in a partition since given to another worker
    po.keep_only({TP2})
    assert po.committable(other) is None
    assert po.holes(older_than_s=0.0, now=100.0) == {}
    assert po.committable(TP2) == 5
