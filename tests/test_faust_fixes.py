"""The fixes to faust-streaming 0.15.3 in quax_faust/stream/faust_fixes.py, and install()'s version guard.

1. Flush before commit: Faust's own ProducerBuffer, with a channel slower to accept a record than
   Faust's 0.1 s patience; then Faust's own Consumer.commit, which must hand the buffered changelog
   records over before it commits offsets.
2. Commit only what was processed: the pure bookkeeping (ProcessedOffsets) alone, then the patch on
   Faust's own consumer object with the sequence a revocation produces.
3. Read skipped offsets again: reread_holes() on Faust's own consumer, whose driver thread (aiokafka's,
   normally talking to the broker) is replaced by an in-memory FakeBroker, with a hand-moved clock.

Each fix's test fails with the fix removed; the ``unpatched`` tests show Faust's own behaviour that
makes the fix necessary. Nothing here starts a broker: tests/test_reliability.py runs the whole
thing on a real one.
"""

from __future__ import annotations

import asyncio

import faust
import pytest
from mode.utils.queues import FlowControlQueue
from prometheus_client import REGISTRY
from faust.transport.consumer import Consumer
from faust.transport.producer import ProducerBuffer
from faust.types import TP
from faust.types.tuples import ConsumerMessage, FutureMessage, PendingMessage

from quax_faust.stream import faust_fixes
from quax_faust.stream.processed_offsets import ProcessedOffsets

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


def test_offsets_the_group_committed_later_are_processed_not_a_hole():
    """At an assignment the partition's previous worker may commit after this one started counting
    (here from 0, nothing committed then): the consumer starts at 6, which looks like a hole 0..5.
    The group's committed offset says 0..5 were processed: advance() counts them."""
    po = ProcessedOffsets()
    po.start(TP2, 0)
    assert po.to_commit(TP2) is None, "nothing processed here: nothing of ours to commit"
    assert po.processed(TP2, 6, now=100.0) == (0, 5)
    po.processed(TP2, 7, now=100.0)
    po.processed(TP2, 9, now=100.0)
    assert po.to_commit(TP2) is None, "never the start: it could move the group's offset back"
    assert po.advance(TP2, 3) == (0, 2)
    assert po.holes(older_than_s=0.0, now=200.0) == {TP2: (3, 5)}, "a hole the commit does not cover stays"
    assert po.advance(TP2, 6, now=200.0) == (3, 5)
    assert po.committable(TP2) == 8 and po.to_commit(TP2) == 8, "6 and 7 were processed here"
    assert po.holes(older_than_s=0.0, now=300.0) == {TP2: (8, 8)}, "8 is still missing"
    assert po.advance(TP2, 5) is None, "an older commit settles nothing"
    assert po.advance(TP(TOPIC, 9), 5) is None, "nor one of a partition not counted here"


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
    """Faust's own methods, whatever was installed before (the worker command installs them: stream/worker.py), and
    no topic guarded; the classes and faust_fixes' guarded topics and count are restored on teardown."""
    monkeypatch.setattr(faust_fixes, "_guarded", set())
    monkeypatch.setattr(faust_fixes, "offsets", ProcessedOffsets())
    originals = (faust_fixes._original_send_pending, faust_fixes._original_flush,
                 faust_fixes._original_filter_committable_offsets, faust_fixes._original_perform_seek)
    for (cls, name), original in zip(PATCHED, originals):
        monkeypatch.setattr(cls, name, original)


@pytest.fixture
def installed(unpatched):
    """faust_fixes.install(), undone after the test; TOPIC guarded, its count fresh."""
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
    assert po.stalled({TP2: 10}, older_than_s=20.0, now=100.0) == {}, "waiting seen first"
    assert po.stalled({TP2: 10}, older_than_s=20.0, now=119.0) == {}
    assert po.stalled({TP2: 10}, older_than_s=20.0, now=120.0) == {TP2: (6, 9)}
    assert po.stalled({TP2: 6}, older_than_s=20.0, now=500.0) == {}, "nothing waiting: idle, not stalled"
    for k in range(6, 10):
        po.processed(TP2, k, now=130.0)
    assert po.stalled({TP2: 10}, older_than_s=20.0, now=140.0) == {}


def test_an_idle_partition_whose_next_message_just_arrived_is_not_stalled():
    """The wait counts from when messages were first seen waiting, not from the last progress: a
    partition idle for a minute is not stalled the moment a new message raises its highwater (that
    false stall re-read offsets already processed: duplicates counted in the e2e test)."""
    po = ProcessedOffsets()
    po.start(TP2, 5)
    po.processed(TP2, 5, now=100.0)
    assert po.stalled({TP2: 6}, older_than_s=20.0, now=130.0) == {}, "idle: nothing waiting"
    assert po.stalled({TP2: 7}, older_than_s=20.0, now=160.0) == {}, "offset 6 just arrived"
    assert po.stalled({TP2: 7}, older_than_s=20.0, now=179.0) == {}
    assert po.stalled({TP2: 7}, older_than_s=20.0, now=180.0) == {TP2: (6, 6)}, "20 s of waiting"
    po.processed(TP2, 6, now=181.0)
    assert po.stalled({TP2: 8}, older_than_s=20.0, now=200.0) == {}, "progress restarts the wait"
    assert po.stalled({TP2: 8}, older_than_s=20.0, now=220.0) == {TP2: (7, 7)}


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


def test_a_long_flush_says_what_it_waits_for(installed, caplog):
    """A flush that waits (a commit held back, maybe a rebalance) warns with the messages still
    buffered, so a stuck worker's log says why it does not commit."""
    async def run():
        app = faust.App("flush-test", broker="kafka://127.0.0.1:1")
        buffer, channel = await buffer_of(app), SlowChannel()
        for k in range(3):
            buffer.put(changelog_record(channel, b"record %d" % k))
        await faust_fixes._flush(buffer, warn_every_s=SEND_S / 2)
        await buffer.stop()
        return channel.handed_over

    with caplog.at_level("WARNING", logger=faust_fixes.__name__):
        assert len(asyncio.run(run())) == 3
    waits = [r.getMessage() for r in caplog.records if "producer flush before a commit" in r.getMessage()]
    assert waits and all("messages buffered" in w for w in waits)


@pytest.mark.parametrize("taken_first", [False, True], ids=["buffered", "last-one-being-sent"])
def test_unpatched_faust_flush_returns_with_records_still_unsent(unpatched, taken_first):
    """Why the fix exists: Faust 0.15.3's flush gives up after 0.1 s without a message sent."""
    n = 1 if taken_first else 3
    handed_over, left, took_s = flush_outcome(n, taken_first)
    assert len(handed_over) < n, "a consumer commit right now would pass changelog records not sent"


# --- a worker's consumer over an in-memory broker ----------------------------------------------

class Clock:
    """The time ProcessedOffsets sees (s), moved by hand."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class FakeBroker:
    """Stands in for the consumer's driver thread (aiokafka's, talking to the broker): the group's
    committed offsets, the fetch positions and the high watermarks, in memory. Everything above it
    is Faust's own Consumer; every call is recorded with whether the flow was stopped meanwhile."""

    def __init__(self, consumer: Consumer, highwater: dict[TP, int], committed: dict[TP, int],
                 earliest: dict[TP, int] | None = None) -> None:
        self.consumer = consumer
        self.highwaters = dict(highwater)
        self.committed = dict(committed)
        self.earliest = earliest or {tp: 0 for tp in highwater}
        self.position: dict[TP, int] = {}
        self.calls: list[tuple] = []

    def _ensure_consumer(self) -> "FakeBroker._Client":
        return FakeBroker._Client(self)

    async def call_thread(self, fn, *args):
        return await fn(*args)

    class _Client:
        """aiokafka's consumer as the driver thread holds it: here only ``committed``."""

        def __init__(self, broker: "FakeBroker") -> None:
            self.broker = broker

        async def committed(self, tp: TP) -> int | None:
            return self.broker.committed.get(tp)

    def _record(self, *call) -> None:
        self.calls.append(call + (self.consumer.flow_active, self.consumer.app.flow_control.is_active()))

    def assignment(self) -> set[TP]:
        return set(self.highwaters)

    def highwater(self, tp: TP) -> int:
        return self.highwaters[tp]

    async def earliest_offsets(self, *tps: TP) -> dict[TP, int]:
        return {tp: self.earliest[tp] for tp in tps}

    async def seek_to_committed(self) -> dict[TP, int | None]:
        """As aiokafka: each assigned partition with a committed offset is sought to it."""
        found = {tp: self.committed.get(tp) for tp in self.assignment()}
        for tp, offset in found.items():
            if offset:
                self.position[tp] = offset
        self._record("seek_to_committed")
        return found

    def seek(self, tp: TP, offset: int) -> None:
        self.position[tp] = offset
        self._record("seek", tp, offset)

    async def commit(self, offsets: dict[TP, int]) -> bool:
        self.committed.update(offsets)
        self._record("commit", dict(offsets))
        return True


def worker(clock: Clock, highwater: dict[TP, int], committed: dict[TP, int],
           earliest: dict[TP, int] | None = None) -> tuple[faust.App, Consumer, FakeBroker]:
    """A running worker's app and consumer, just assigned ``highwater``'s partitions (call in a loop;
    with ``unpatched`` or ``installed``, which put the module's count back afterwards)."""
    faust_fixes.offsets = ProcessedOffsets(clock)
    app = faust.App("reread-test", broker="kafka://127.0.0.1:1")
    app.topics._acking_topics.add(TOPIC)
    consumer = app.consumer
    broker = consumer._thread = FakeBroker(consumer, highwater, committed, earliest)
    app.flow_control.resume()
    return app, consumer, broker


def deliver(consumer: Consumer, offset: int, partition: int = 2) -> None:
    """The consumer delivers ``offset``, an agent processes it, the stream acks it (as app.py)."""
    m = message(offset, partition)
    faust_fixes.note_processed(m)
    m.ack(consumer)


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def holes_total() -> float:
    return counter("quax_offset_holes_total", topic=TOPIC)


def rereads_total() -> float:
    return counter("quax_offset_rereads_total")


# --- fix 1 again, end to end in the consumer: Consumer.commit flushes, then commits ----------

def changelog_sent_when_offsets_committed() -> tuple[list[bytes], dict[TP, int]]:
    """An agent processed slices[2] offset 10 and wrote a table change (buffered, slow to send);
    Faust commits: (changelog records handed over when the broker got the offsets, the offsets)."""
    async def run():
        app, consumer, broker = worker(Clock(100.0), highwater={TP2: 20}, committed={TP2: 10})
        await consumer.perform_seek()
        await app.producer.buffer.start()  # the worker's own producer buffer
        channel, seen_at_commit = SlowChannel(), []
        commit = broker.commit

        async def commit_noting_changelog(offsets):
            seen_at_commit.extend(channel.handed_over)
            return await commit(offsets)

        broker.commit = commit_noting_changelog
        app.producer.buffer.put(changelog_record(channel, b"file 12: slice 3 counted"))
        deliver(consumer, 10)
        await consumer.commit()
        await asyncio.sleep(2 * SEND_S)
        await app.producer.buffer.stop()
        return seen_at_commit, broker.committed

    return asyncio.run(run())


def test_offsets_are_committed_only_after_the_table_changes_they_caused(installed):
    assert changelog_sent_when_offsets_committed() == ([b"file 12: slice 3 counted"], {TP2: 11})


def test_unpatched_faust_commits_offsets_ahead_of_their_table_changes(unpatched):
    """Why fix 1 exists: a crash now restores the table without slice 3, and offset 10 is not read again."""
    assert changelog_sent_when_offsets_committed() == ([], {TP2: 11})


# --- fix 3: reread_holes ----------------------------------------------------------------------

def test_a_skipped_offset_is_read_again_after_5_s(installed ):
    """The consumer delivers 10, 11, then 14: 12..13 were skipped. After 5 s the worker stops its
    flow, commits 12 (not 16), seeks back to 12 and resumes; 12..15 arrive again."""
    async def run():
        clock = Clock(100.0)
        app, consumer, broker = worker(clock, highwater={TP2: 20}, committed={TP2: 10})
        await consumer.perform_seek()  # the assignment: counting starts at the committed offset
        assert faust_fixes.offsets.committable(TP2) == 10
        queued = FlowControlQueue(flow_control=app.flow_control, clear_on_resume=True)
        holes, rereads = holes_total(), rereads_total()
        for k in (10, 11, 14, 15):
            deliver(consumer, k)
        broker.position[TP2] = 16
        assert holes_total() == holes + 1, "the hole is counted when 14 arrives"
        assert faust_fixes.offsets.committable(TP2) == 12

        clock.t = 104.9
        broker.calls.clear()
        await faust_fixes.reread_holes(app)
        assert broker.calls == [] and rereads_total() == rereads, "younger than 5 s: Faust may still deliver"

        clock.t = 105.0
        app.rebalancing = True
        await faust_fixes.reread_holes(app)
        assert broker.calls == [], "a rebalance seeks by itself"
        app.rebalancing = False

        queued.put_nowait("event 14, fetched before the seek")
        await faust_fixes.reread_holes(app)
        stopped = (False, False)  # consumer flow, flow control: both stopped
        assert broker.calls == [("commit", {TP2: 12}) + stopped, ("seek_to_committed",) + stopped,
                                ("seek", TP2, 12) + stopped]
        assert broker.committed == {TP2: 12} and broker.position == {TP2: 12}
        assert queued.empty(), "events queued before the seek are dropped"
        assert consumer.flow_active and app.flow_control.is_active(), "resumed"
        assert rereads_total() == rereads + 1
        assert faust_fixes.offsets.committable(TP2) == 12
        assert faust_fixes.offsets.holes(5.0) == {}, "timed afresh: the re-read has 5 s to fill the hole"
        assert faust_fixes.offsets.seen(TP2, 14) and faust_fixes.offsets.seen(TP2, 15), "still known as processed"

        for k in range(12, 20):  # read again from 12: the count goes on, no new hole
            deliver(consumer, k)
        assert faust_fixes.offsets.committable(TP2) == 20 and holes_total() == holes + 1
        clock.t = 1000.0
        broker.calls.clear()
        await faust_fixes.reread_holes(app)
        assert broker.calls == [] and rereads_total() == rereads + 1, "all read: nothing to do"

    asyncio.run(run())


def test_a_partition_not_delivered_for_20_s_with_messages_waiting_is_read_again(installed ):
    """The stall: slices[2] delivered 10..13 and then nothing, though 14..19 are there; slices[3]
    (nothing committed yet, log starting at 5) never delivered anything. No later offset reveals a
    hole, so only the wait shows it. After 20 s: stop, commit, seek both back, resume."""
    tp3 = TP(TOPIC, 3)

    async def run():
        clock = Clock(100.0)
        app, consumer, broker = worker(clock, highwater={TP2: 20, tp3: 12}, committed={TP2: 10},
                                       earliest={TP2: 0, tp3: 5})
        await consumer.perform_seek()
        assert (faust_fixes.offsets.committable(TP2), faust_fixes.offsets.committable(tp3)) == (10, 5)
        holes, rereads = holes_total(), rereads_total()
        for k in range(10, 14):
            deliver(consumer, k)
        broker.position = {TP2: 20, tp3: 12}  # fetched to the end, not delivered
        broker.calls.clear()
        await faust_fixes.reread_holes(app)  # the timer's look at t = 100: messages waiting
        assert broker.calls == [] and rereads_total() == rereads, "waiting, not yet stalled"

        clock.t = 119.9
        broker.calls.clear()
        await faust_fixes.reread_holes(app)
        assert broker.calls == [] and rereads_total() == rereads, "no delivery for 19.9 s: not yet stalled"

        clock.t = 120.0
        await faust_fixes.reread_holes(app)
        stopped = (False, False)
        assert broker.calls[:2] == [("commit", {TP2: 14}) + stopped, ("seek_to_committed",) + stopped]
        assert sorted(broker.calls[2:]) == [("seek", TP2, 14) + stopped, ("seek", tp3, 5) + stopped]
        assert broker.committed == {TP2: 14}, "slices[3]: nothing processed, nothing committed"
        assert broker.position == {TP2: 14, tp3: 5}, "both back to their first offset not processed"
        assert consumer.flow_active and app.flow_control.is_active()
        assert rereads_total() == rereads + 1
        assert holes_total() == holes, "a stall is not a hole"

        for k in range(14, 20):
            deliver(consumer, k)
        for k in range(5, 12):
            deliver(consumer, k, partition=3)
        clock.t = 1000.0
        broker.calls.clear()
        await faust_fixes.reread_holes(app)
        assert broker.calls == [] and rereads_total() == rereads + 1, "nothing waiting: idle, not stalled"
        assert (faust_fixes.offsets.committable(TP2), faust_fixes.offsets.committable(tp3)) == (20, 12)

    asyncio.run(run())


def test_a_hole_the_previous_worker_committed_is_not_read_again(installed):
    """slices[2] just assigned, nothing committed yet: counting starts at 0. The previous worker
    then commits 6 (it had processed 0..5), so the consumer starts at 6. No commit of 0 (it would
    move the group's offset back), and after 5 s no re-read: the group's offset settles the hole.
    slices[3] had a real hole (12..13 skipped, committed 10): that one is read again."""
    tp3 = TP(TOPIC, 3)

    async def run():
        clock = Clock(100.0)
        app, consumer, broker = worker(clock, highwater={TP2: 10, tp3: 20}, committed={tp3: 10})
        await consumer.perform_seek()
        assert faust_fixes.offsets.committable(TP2) == 0
        broker.committed[TP2] = 6  # the previous worker's late commit
        for k in range(6, 10):
            deliver(consumer, k)
        assert faust_fixes.offsets.committable(TP2) == 0
        assert consumer._filter_committable_offsets({TP2}) == {}, "never 0: below the group's 6"
        clock.t = 105.0
        rereads = rereads_total()
        broker.calls.clear()
        await faust_fixes.reread_holes(app)
        assert broker.calls == [] and rereads_total() == rereads, "0..5 were processed: nothing to read"
        assert faust_fixes.offsets.committable(TP2) == 10 and faust_fixes.offsets.holes(0.0) == {}
        await consumer.commit()
        assert broker.committed[TP2] == 10

        for k in (10, 11, 14):
            deliver(consumer, k, partition=3)
        clock.t = 111.0
        await faust_fixes.reread_holes(app)
        assert rereads_total() == rereads + 1, "a hole the group's offset does not cover is read again"
        assert broker.position[tp3] == 12

    asyncio.run(run())


def test_a_stall_the_previous_worker_committed_is_not_read_again(installed):
    """The run-metadata partition holds one record, offset 0. Its previous worker processed it and
    committed 1 after this worker started counting from 0; the consumer starts at 1 and delivers
    nothing. Highwater 1 > 0 for 20 s looks like a stall, but the group's offset says it is not."""
    async def run():
        clock = Clock(100.0)
        app, consumer, broker = worker(clock, highwater={TP2: 1}, committed={})
        await consumer.perform_seek()
        broker.committed[TP2] = 1
        rereads = rereads_total()
        await faust_fixes.reread_holes(app)  # messages waiting seen at 100
        clock.t = 120.0
        broker.calls.clear()
        await faust_fixes.reread_holes(app)
        assert broker.calls == [] and rereads_total() == rereads
        assert faust_fixes.offsets.committable(TP2) == 1
        assert faust_fixes.offsets.stalled({TP2: 1}, older_than_s=0.0) == {}

    asyncio.run(run())


def test_a_message_processed_here_and_delivered_again_is_skipped_once_counted(installed):
    """After a re-read seeks back over offsets this worker processed (15 before the hole 12..14
    was filled), their second delivery is recognised: the agent skips it, and
    quax_redelivered_messages_total counts it. Offsets not processed yet are not."""
    po = faust_fixes.offsets = ProcessedOffsets()
    po.start(TP2, 10)
    for k in (10, 11, 15):
        faust_fixes.note_processed(message(k))
    assert [po.seen(TP2, k) for k in (9, 10, 11, 12, 14, 15, 16)] == [True, True, True, False, False, True, False]
    before = counter("quax_redelivered_messages_total", topic=TOPIC)
    assert not faust_fixes.redelivered(message(12)), "skipped by the consumer: never processed here"
    assert faust_fixes.redelivered(message(15)) and faust_fixes.redelivered(message(11))
    assert counter("quax_redelivered_messages_total", topic=TOPIC) == before + 2
    assert not faust_fixes.redelivered(message(11, partition=7)), "a partition not counted here"
    faust_fixes.guard_topics(["some-other-topic"])
    assert not faust_fixes.redelivered(message(15)), "only the agents' source topics"


def test_a_seek_in_the_same_generation_keeps_the_count_a_new_generation_starts_afresh():
    po = ProcessedOffsets(Clock(100.0))
    po.start(TP2, 10, generation=3)
    for k in (10, 11, 15):
        po.processed(TP2, k, now=100.0)
    po.start(TP2, 12, generation=3)  # a re-read's seek back to the committed offset
    assert po.committable(TP2) == 12 and po.seen(TP2, 15), "what was processed here still is"
    assert po.holes(older_than_s=5.0) == {}, "the hole is timed afresh: the re-read has its 5 s"
    po.start(TP2, 14, generation=3)  # the group committed further meanwhile
    assert po.committable(TP2) == 14 and po.seen(TP2, 15)
    po.start(TP2, 12, generation=4)  # a new assignment: another worker may have held it
    assert po.committable(TP2) == 12 and not po.seen(TP2, 15)


def test_a_seek_overtaken_by_a_rebalance_leaves_the_new_assignments_count(installed):
    """Faust's fetcher seeks when it finds the flow stopped; that seek can finish after the next
    assignment's own, when agents have processed 10..12 already: it must not start the count again
    at the committed 10 (12 would then look skipped and be processed twice)."""
    async def run():
        clock = Clock(100.0)
        app, consumer, broker = worker(clock, highwater={TP2: 20}, committed={TP2: 10})
        app.consumer_generation_id = 1
        earliest = broker.earliest_offsets

        async def earliest_meanwhile(*tps):
            app.consumer_generation_id = 2  # the rebalance completes during this seek's await
            faust_fixes.offsets.start(TP2, 10, generation=2)
            for k in (10, 11, 12):
                deliver(consumer, k)
            return await earliest(*tps)

        broker.earliest_offsets = earliest_meanwhile
        await consumer.perform_seek()  # begun in generation 1
        assert faust_fixes.offsets.committable(TP2) == 13 and faust_fixes.offsets.seen(TP2, 12)

    asyncio.run(run())
