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
from faust.types.tuples import ConsumerMessage, FutureMessage, PendingMessage

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


PATCHED = ((ProducerBuffer, "_send_pending"), (ProducerBuffer, "flush"),
           (Consumer, "_filter_committable_offsets"), (Consumer, "perform_seek"))
FIXES = (faust_fixes._send_pending, faust_fixes._flush, faust_fixes._filter_committable_offsets,
         faust_fixes._perform_seek)


@pytest.fixture
def unpatched(monkeypatch):
    """Faust's own methods, whatever was installed before (importing quax_faust.app installs);
    the classes are restored on teardown."""
    originals = (faust_fixes._original_send_pending, faust_fixes._original_flush,
                 faust_fixes._original_filter_committable_offsets, faust_fixes._original_perform_seek)
    for (cls, name), original in zip(PATCHED, originals):
        monkeypatch.setattr(cls, name, original)


@pytest.fixture
def installed(unpatched, monkeypatch):
    """faust_fixes.install(), undone after the test; TOPIC guarded, its count fresh."""
    monkeypatch.setattr(faust_fixes, "offsets", ProcessedOffsets())
    faust_fixes.install()
    faust_fixes.guard_topics([TOPIC])


def patched_names() -> list[str]:
    return [name for (cls, name), fix in zip(PATCHED, FIXES) if getattr(cls, name) is fix]


def test_the_patches_are_for_the_installed_faust():
    assert faust_fixes.installed_faust_version() == faust_fixes.FAUST_VERSION == "0.15.3"
    faust_fixes.check_faust()  # and every private part they touch is there


@pytest.mark.parametrize("version, named", [("0.16.0", "faust-streaming 0.16.0"),
                                            ("0.15.2", "faust-streaming 0.15.2"),
                                            (None, "no faust-streaming")])
def test_install_refuses_another_faust_version(unpatched, monkeypatch, version, named):
    monkeypatch.setattr(faust_fixes, "installed_faust_version", lambda: version)
    with pytest.raises(RuntimeError) as refused:
        faust_fixes.install()
    message = str(refused.value)
    for needed in (named, "faust-streaming 0.15.3", "faust-streaming==0.15.3", "docs/reliability.md"):
        assert needed in message, f"{needed!r} missing from: {message}"
    assert patched_names() == [], "nothing is patched on a Faust the patches were not written for"


def test_install_refuses_a_faust_without_the_private_parts_it_patches(unpatched, monkeypatch):
    monkeypatch.delattr(Consumer, "_should_commit")  # as if a release renamed it
    with pytest.raises(RuntimeError, match=r"Consumer\._should_commit.*docs/reliability\.md"):
        faust_fixes.install()
    assert patched_names() == []


def test_install_twice_is_install_once(unpatched):
    faust_fixes.install()
    faust_fixes.install()
    assert patched_names() == ["_send_pending", "flush", "_filter_committable_offsets", "perform_seek"]
    assert faust_fixes._original_send_pending is not faust_fixes._send_pending, "never wraps itself"
    assert faust_fixes._original_flush is not faust_fixes._flush


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


# --- fix 1: flush before commit, on Faust's own ProducerBuffer --------------------------------

SEND_S = 0.3
"""How long the fake Kafka client takes to accept one message: more than Faust's 0.1 s patience."""


class SlowChannel:
    """Where the buffer hands its messages over (a topic, whose producer is slow under load)."""

    def __init__(self) -> None:
        self.handed_over: list[bytes] = []

    async def publish_message(self, fut: FutureMessage, wait: bool = False) -> None:
        await asyncio.sleep(SEND_S)
        self.handed_over.append(fut.message.value)


def changelog_record(channel: SlowChannel, value: bytes) -> FutureMessage:
    return FutureMessage(PendingMessage(channel, b"run/0000000001", value, 0, None, None, None, None,
                                        None, topic="quax-runs-changelog"))


async def buffer_of(app: faust.App) -> ProducerBuffer:
    buffer = ProducerBuffer()
    buffer.app = app  # as Producer.__init__ does
    await buffer.start()  # its _handle_pending task hands messages to the channel
    return buffer


def flush_outcome(n_records: int, taken_first: bool = False) -> tuple[list[bytes], int, float]:
    """Buffer ``n_records``, flush: (records handed over when flush returned, left in the buffer, s)."""
    async def run():
        app = faust.App("flush-test", broker="kafka://127.0.0.1:1")
        buffer, channel = await buffer_of(app), SlowChannel()
        for k in range(n_records):
            buffer.put(changelog_record(channel, b"record %d" % k))
        if taken_first:
            await asyncio.sleep(SEND_S / 3)  # the last record is being sent, the buffer looks empty
            assert buffer.size == 0 and channel.handed_over == []
        t0 = asyncio.get_running_loop().time()
        await buffer.flush()
        outcome = list(channel.handed_over), buffer.size, asyncio.get_running_loop().time() - t0
        await asyncio.sleep(SEND_S * (n_records + 1))  # let the rest go before stopping
        await buffer.stop()
        return outcome

    return asyncio.run(run())


@pytest.mark.parametrize("taken_first", [False, True], ids=["buffered", "last-one-being-sent"])
def test_flush_waits_for_every_buffered_record_however_slow_the_send(installed, taken_first):
    n = 1 if taken_first else 3
    handed_over, left, took_s = flush_outcome(n, taken_first)
    assert handed_over == [b"record %d" % k for k in range(n)], "all handed over before flush returns"
    assert left == 0
    assert took_s >= SEND_S * (n - 1) + SEND_S / 2


@pytest.mark.parametrize("taken_first", [False, True], ids=["buffered", "last-one-being-sent"])
def test_unpatched_faust_flush_returns_with_records_still_unsent(unpatched, taken_first):
    """Why the fix exists: Faust 0.15.3's flush gives up after 0.1 s without a message sent."""
    n = 1 if taken_first else 3
    handed_over, left, took_s = flush_outcome(n, taken_first)
    assert len(handed_over) < n, "a consumer commit right now would pass changelog records not sent"
