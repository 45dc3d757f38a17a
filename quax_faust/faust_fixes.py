"""A fix for faust-streaming 0.15.3 that at-least-once processing depends on.

Faust flushes its producer before committing consumer offsets, so that table changelog records are
in Kafka before the offsets of the messages that produced them. But ``ProducerBuffer.flush()``
gives up after waiting 0.1 s for the next buffered message to go out (``flush_atmost``): on a
loaded machine, offsets were committed while changelog records still sat in Faust's buffer. A
rebalance then restored the table without them, and the messages were never replayed: slices
lost (seen here as files stuck with part of their slices, under load average ~10 on two cores).

``install()`` makes the flush wait until the buffer is really empty and the last message has been
handed to the Kafka client, whose own flush then waits for the broker's acks.
"""

from __future__ import annotations

import asyncio

from faust.transport.producer import ProducerBuffer

_original_send_pending = ProducerBuffer._send_pending


async def _send_pending(self: ProducerBuffer, fut) -> None:
    self._quax_sending = True  # set before the first await: a flush never sees a gap
    try:
        await _original_send_pending(self, fut)
    finally:
        self._quax_sending = False


async def _flush(self: ProducerBuffer) -> None:
    """Wait until every buffered message has been handed to the Kafka client (no time limit)."""
    while self.size or getattr(self, "_quax_sending", False):
        if self.state != "running":
            raise RuntimeError(f"cannot flush: producer buffer is {self.state} with {self.size} messages")
        self.message_sent.clear()
        try:
            await asyncio.wait_for(self.message_sent.wait(), timeout=1.0)
        except asyncio.TimeoutError:
            pass  # still sending: keep waiting, never commit ahead of the changelog


def install() -> None:
    ProducerBuffer._send_pending = _send_pending
    ProducerBuffer.flush = _flush
