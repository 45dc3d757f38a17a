"""Fixes for faust-streaming 0.15.3 that at-least-once processing depends on.

1. **Flush before commit.** Faust flushes its producer before committing consumer offsets, so that
   table changelog records are in Kafka before the offsets of the messages that produced them. But
   ``ProducerBuffer.flush()`` gives up after waiting 0.1 s for the next buffered message to go out
   (``flush_atmost``): on a loaded machine, offsets were committed while changelog records still sat
   in Faust's buffer. A rebalance then restored the table without them, and the messages were never
   replayed (files stuck with part of their slices, under load average ~10 on two cores). The fix
   makes the flush wait until the buffer is really empty and the last message has been handed to
   the Kafka client, whose own flush then waits for the broker's acks.

2. **Commit only what was processed.** Faust commits the offsets its streams *acked*, and during a
   rebalance a stream acks events it skips without processing (``Stream._py_aiter``: events
   dequeued while flow control is suspended, or fetched in an older consumer generation), while
   the consumer has just forgotten the partition's committed offset and with it its gap check.
   Seen here: after workers joined during a backlog, a whole file, or eight file spectra in a row,
   were committed and never counted. So for the agents' source topics the offset committed is ours,
   not Faust's: the first offset not yet processed here (``ProcessedOffsets``), counted from the
   committed offset the consumer seeks to at each assignment. Whatever Faust skips, the commit
   stops in front of it.

3. **Read holes again.** If the consumer delivers an offset beyond the first unprocessed one (it
   skipped messages), the hole is logged and counted in ``quax_offset_holes_total``; if it delivers
   nothing of a partition that has messages waiting, the partition is stalled (seen here: the last
   file's messages never delivered after a rebalance, with nothing after them to reveal the hole).
   Either way ``reread_holes()`` (a timer in app.py) stops the flow, commits what was processed and
   seeks every partition back to its first unprocessed offset, as Faust itself does after a
   rebalance; the messages are read again and the idempotent tables ignore the ones seen twice.
   First it asks the broker for the group's committed offsets: at an assignment the partition's
   previous worker may still commit what it processed *after* this one started counting from the
   older offset, and the consumer then starts at the newer one. Those offsets are no hole: they
   are counted as processed (``ProcessedOffsets.advance``) and not read again. A worker commits a
   partition only once it has processed something there (``to_commit``), so it never moves the
   group's offset back below its previous worker's.

``install()`` applies the patches, and refuses to on any faust-streaming other than ``FAUST_VERSION``
(the patches replace and read private parts of Faust that may change in any release);
``guard_topics()`` names the agents' source topics.
"""

from __future__ import annotations

import asyncio
import logging
import time
from importlib import metadata
from typing import Iterable

from faust.transport.consumer import Consumer, ThreadDelegateConsumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.transport.producer import ProducerBuffer
from faust.types import TP, Message

from quax_faust.stream import metrics
from quax_faust.stream.processed_offsets import ProcessedOffsets

log = logging.getLogger(__name__)

FAUST_VERSION = "0.15.3"
"""The faust-streaming release these patches were written for and checked against."""

_original_send_pending = ProducerBuffer._send_pending
_original_flush = ProducerBuffer.flush
_original_filter_committable_offsets = Consumer._filter_committable_offsets
_original_perform_seek = Consumer.perform_seek


async def _send_pending(self: ProducerBuffer, fut) -> None:
    self._quax_sending = True  # set before the first await: a flush never sees a gap
    try:
        await _original_send_pending(self, fut)
    finally:
        self._quax_sending = False


async def _flush(self: ProducerBuffer, warn_every_s: float = 30.0) -> None:
    """Wait until every buffered message has been handed to the Kafka client (no time limit; a
    warning every ``warn_every_s`` seconds of waiting says how many messages are still buffered)."""
    started = warned = time.monotonic()
    while self.size or getattr(self, "_quax_sending", False):
        if self.state != "running":
            raise RuntimeError(f"cannot flush: producer buffer is {self.state} with {self.size} messages")
        self.message_sent.clear()
        try:
            await asyncio.wait_for(self.message_sent.wait(), timeout=1.0)
        except asyncio.TimeoutError:
            pass  # still sending: keep waiting, never commit ahead of the changelog
        if time.monotonic() - warned >= warn_every_s:
            warned = time.monotonic()
            log.warning("producer flush before a commit still waiting after %.0f s: %d messages buffered%s",
                        warned - started, self.size, ", one being sent" if getattr(self, "_quax_sending", False) else "")


_guarded: set[str] = set()
offsets = ProcessedOffsets()


def guard_topics(topics: Iterable[str]) -> None:
    """Commit offsets of these topics (and no longer of others) as counted by ``offsets``."""
    _guarded.clear()
    _guarded.update(topics)


def redelivered(message: Message) -> bool:
    """This worker has processed this message already, since its partition was assigned (a re-read
    sought back over it): its effects are in the tables, so the agent skips it. Counted in
    ``quax_redelivered_messages_total``."""
    if message.topic not in _guarded or not offsets.seen(message.tp, message.offset):
        return False
    metrics.REDELIVERED.labels(topic=message.topic).inc()
    return True


def note_processed(message: Message, rebalancing: bool = False) -> None:
    """An agent has finished this message (its effects are in the tables).

    During a rebalance the count may just have been reset to the committed offset, so an offset
    beyond it is no evidence of a hole: it is left out (the commit can only be lower for it).
    """
    if message.topic not in _guarded:
        return
    if rebalancing and (offsets.committable(message.tp) or 0) < message.offset:
        return
    hole = offsets.processed(message.tp, message.offset)
    if hole is not None:
        metrics.OFFSET_HOLES.labels(topic=message.topic).inc()
        log.warning("%s[%d]: offsets %d..%d were skipped by the consumer (offset %d arrived first); they "
                  "are not committed and will be read again", message.topic, message.partition,
                  hole[0], hole[1], message.offset)


def _filter_committable_offsets(self: Consumer, tps: Iterable[TP]) -> dict[TP, int]:
    tps = list(tps)
    proposed = _original_filter_committable_offsets(self, tps)  # also clears Faust's ack lists
    chosen = {tp: offset for tp, offset in proposed.items() if tp.topic not in _guarded}
    for tp in tps:
        if tp.topic in _guarded:
            offset = offsets.to_commit(tp)
            if offset is not None and self._should_commit(tp, offset):
                chosen[tp] = offset
    return chosen


async def _perform_seek(self: Consumer) -> None:
    generation = self.app.consumer_generation_id
    await _original_perform_seek(self)
    assigned = self.assignment()
    offsets.keep_only(assigned)
    guarded = [tp for tp in assigned if tp.topic in _guarded]
    if not guarded:
        return
    try:
        earliest = await asyncio.wait_for(self.earliest_offsets(*guarded), 10.0)
    except Exception as exc:  # noqa: BLE001 - no commit for them until the next seek
        log.warning("log start offsets unknown (%r); not committing %s until the next rebalance",
                    exc, ", ".join(map(str, guarded)))
        for tp in guarded:
            offsets.forget(tp)
        return
    if self.app.consumer_generation_id != generation:
        # A seek begun before a rebalance (Faust's fetcher seeks when it finds the flow stopped)
        # finishing after the new assignment's own: the counts are the new one's. Starting them
        # here again would forget what the agents processed meanwhile.
        return
    for tp in guarded:
        committed, start = self._committed_offset.get(tp), earliest[tp]
        if committed is not None and committed < start:
            metrics.OFFSET_HOLES.labels(topic=tp.topic).inc()
            log.error("%s: offsets %d..%d were deleted (retention) before any worker processed them",
                      tp, committed, start - 1)
        # nothing committed yet: the group starts at the log start
        offsets.start(tp, start if committed is None else max(committed, start), generation)


def _highwaters(consumer: Consumer) -> dict[TP, int]:
    found = {}
    for tp in consumer.assignment():
        if tp.topic in _guarded:
            try:
                highwater = consumer.highwater(tp)
            except Exception:  # noqa: BLE001 - not fetched yet, or the assignment is changing
                continue
            if highwater is not None:
                found[tp] = highwater
    return found


async def _settle_with_group(consumer: Consumer, tps: Iterable[TP], timeout_s: float = 10.0) -> bool:
    """Count as processed what the group's committed offsets (fetched now) say was: a partition's
    previous worker may have committed after this one started counting there, and what looks like
    a hole or a stall is then offsets processed before. True if that settled anything."""
    thread = consumer._thread  # the driver's thread, which owns aiokafka's consumer
    client = thread._ensure_consumer()
    settled = False
    for tp in tps:
        try:
            committed = await asyncio.wait_for(thread.call_thread(client.committed, tp), timeout_s)
        except Exception as exc:  # noqa: BLE001 - not known: read them again, as without this check
            log.warning("%s: committed offset unknown (%r)", tp, exc)
            continue
        done = offsets.advance(tp, committed) if committed is not None and committed >= 0 else None
        if done is not None:
            settled = True
            log.info("%s[%d]: offsets %d..%d were committed by the partition's previous worker; not "
                     "read again", tp.topic, tp.partition, *done)
    return settled


async def reread_holes(app, older_than_s: float = 5.0, stalled_s: float = 20.0) -> None:
    """Seek back to the committed offsets if the consumer skipped messages ``older_than_s`` ago, or
    has delivered nothing of a partition with messages waiting for ``stalled_s``.

    Like Faust after a rebalance: stop the flow and drop the queued events, commit what was
    processed, seek every partition to its first unprocessed offset, resume. Not during a
    rebalance.
    """
    consumer = app.consumer
    if app.rebalancing or not consumer.flow_active:
        return
    assigned = consumer.assignment()

    def due() -> tuple[dict, dict]:
        """(stalled, skipped) partitions: {tp: (first, last) offset to read again}."""
        stalled = offsets.stalled(_highwaters(consumer), stalled_s)  # highwaters: assigned ones only
        return stalled, {tp: hole for tp, hole in offsets.holes(older_than_s).items() if tp in assigned}

    stalled, skipped = due()
    if not stalled and not skipped:
        return
    if await _settle_with_group(consumer, set(stalled) | set(skipped)):
        stalled, skipped = due()
        if not stalled and not skipped:
            return
    generation = app.consumer_generation_id
    log.warning("reading offsets again: %s", ", ".join(
        [f"{tp.topic}[{tp.partition}] {a}..{b} (skipped)" for tp, (a, b) in skipped.items()]
        + [f"{tp.topic}[{tp.partition}] {a}..{b} (not delivered for {stalled_s:g} s)"
           for tp, (a, b) in stalled.items()]))
    consumer.stop_flow()
    app.flow_control.suspend()
    app.flow_control.clear()
    try:
        await asyncio.sleep(1.5)  # the fetcher's current getmany (1 s timeout) hands over its batch
        if app.rebalancing or app.consumer_generation_id != generation:
            return  # the rebalance seeks and resumes by itself
        await consumer.commit()  # each guarded partition's first unprocessed offset
        await consumer.perform_seek()  # every partition back to its committed offset (counts kept:
        # the same generation, so what was processed here still is; redelivered() skips it)
        for tp in consumer.assignment():  # and explicitly, also where nothing was ever committed
            first = offsets.committable(tp) if tp.topic in _guarded else None
            if first is not None:
                await consumer.seek(tp, first)
    finally:
        if not app.rebalancing and app.consumer_generation_id == generation:
            app.flow_control.resume()
            consumer.resume_flow()
    metrics.OFFSET_REREADS.inc()


# What the patches replace or rely on, beyond Faust's public API (checked by install(); the buffer's
# ``message_sent`` event exists only on instances: the flush test in tests/test_faust_fixes.py covers it).
_PRIVATE_PARTS = ((ProducerBuffer, "_send_pending"), (ProducerBuffer, "flush"), (ProducerBuffer, "size"),
                  (ProducerBuffer, "_handle_pending"),
                  (Consumer, "_filter_committable_offsets"), (Consumer, "_should_commit"),
                  (Consumer, "_committed_offset"), (Consumer, "perform_seek"),
                  (Consumer, "earliest_offsets"), (Consumer, "highwater"),
                  (ThreadDelegateConsumer, "_thread"), (AIOKafkaConsumerThread, "_ensure_consumer"),
                  (AIOKafkaConsumerThread, "call_thread"))


def installed_faust_version() -> str | None:
    """The installed faust-streaming's version, None if it is not installed as faust-streaming."""
    try:
        return metadata.version("faust-streaming")
    except metadata.PackageNotFoundError:
        return None


def _has(cls: type, name: str) -> bool:
    """``cls`` has attribute ``name``, or declares it for its instances (set in ``__init__``)."""
    return hasattr(cls, name) or any(name in vars(k).get("__annotations__", {}) for k in cls.__mro__)


def check_faust() -> None:
    """Raise RuntimeError unless the installed Faust is the one the patches were written for."""
    installed = installed_faust_version()
    if installed != FAUST_VERSION:
        raise RuntimeError(
            f"quax_faust/stream/faust_fixes.py patches private parts of faust-streaming {FAUST_VERSION}, but "
            f"{'no faust-streaming' if installed is None else f'faust-streaming {installed}'} is "
            f"installed. Install faust-streaming=={FAUST_VERSION} (pyproject.toml), or check each fix "
            f"against the new version's source (docs/reliability.md, \"What Faust gets wrong\"), run "
            f"tests/test_faust_fixes.py and the rebalance drills, then update FAUST_VERSION.")
    missing = [f"{cls.__name__}.{name}" for cls, name in _PRIVATE_PARTS if not _has(cls, name)]
    if missing:
        raise RuntimeError(
            f"quax_faust/stream/faust_fixes.py: faust-streaming {installed} lacks {', '.join(missing)}, which "
            f"the patches replace or read; see docs/reliability.md, \"What Faust gets wrong\".")


def install() -> None:
    """Apply the patches (again: no effect); RuntimeError on a Faust they were not written for."""
    check_faust()
    ProducerBuffer._send_pending = _send_pending
    ProducerBuffer.flush = _flush
    Consumer._filter_committable_offsets = _filter_committable_offsets
    Consumer.perform_seek = _perform_seek
