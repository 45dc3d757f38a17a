"""Which offsets of each partition an agent has processed: the bookkeeping behind faust_fixes.py's
commit of only what was processed, and its re-read of holes and stalls (pure: no Faust, no Kafka).
Offsets are Kafka offsets; times are seconds of the given clock (time.monotonic by default).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from faust.types import TP


@dataclass
class _Partition:
    next: int
    """The first offset not processed: every offset below it was processed (here, or before the
    committed offset this count started from)."""
    start: int = 0
    """Where counting started (the consumer's seek). Until ``next`` passes it nothing was processed
    here, and there is nothing of ours to commit."""
    generation: int | None = None
    """The consumer generation (assignment) in which counting started."""
    ahead: set[int] = field(default_factory=set)
    """Offsets processed beyond ``next``: the consumer skipped ``next`` .. min(ahead) - 1."""
    hole_seen_at: float | None = None
    """When the current hole was first seen (the ProcessedOffsets clock, s)."""
    moved_at: float = field(default_factory=time.monotonic)
    """When ``next`` last moved, or counting started (the ProcessedOffsets clock, s)."""
    waiting_since: float | None = None
    """When messages were first seen waiting (highwater > next) since ``next`` last moved (s)."""


class ProcessedOffsets:
    """Per partition, which offsets an agent has processed since the consumer sought to ``start``.

    Messages of a partition are processed in offset order, so normally ``next`` just moves on; an
    offset beyond it means the consumer skipped some (a hole), and ``next`` waits for them.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._parts: dict[TP, _Partition] = {}
        self._clock = clock  # seconds; the tests' is controllable

    def start(self, tp: TP, offset: int, generation: int | None = None) -> None:
        """The consumer (re)starts ``tp`` at ``offset``: everything below counts as processed.

        A seek within the same consumer ``generation`` (a re-read, not a new assignment) keeps the
        count: what was processed here still is, and its second delivery is recognised (``seen``).
        The count moves on to ``offset`` if that is further, and its holes and waits are timed
        afresh (the re-read gets its time to fill them). A new generation, or none given, starts
        afresh: in between, another worker may have held the partition."""
        now = self._clock()
        part = self._parts.get(tp)
        if part is None or generation is None or part.generation != generation:
            self._parts[tp] = _Partition(offset, start=offset, generation=generation, moved_at=now)
            return
        if offset > part.next:
            part.ahead = {k for k in part.ahead if k >= offset}
            self._move(part, offset, now)
        part.moved_at, part.waiting_since = now, None
        part.hole_seen_at = now if part.ahead else None

    def forget(self, tp: TP) -> None:
        self._parts.pop(tp, None)

    def keep_only(self, tps: Iterable[TP]) -> None:
        """Forget the partitions not in ``tps`` (no longer assigned here)."""
        for tp in set(self._parts) - set(tps):
            del self._parts[tp]

    def processed(self, tp: TP, offset: int, now: float | None = None) -> tuple[int, int] | None:
        """Count one processed offset; return (first, last) of a hole it reveals, else None."""
        part = self._parts.get(tp)
        if part is None or offset < part.next or offset in part.ahead:
            return None  # not started here (nothing will be committed for it), or seen before
        if offset > part.next:
            new_hole = not part.ahead
            part.ahead.add(offset)
            if new_hole:
                part.hole_seen_at = self._clock() if now is None else now
                return part.next, offset - 1
            return None
        self._move(part, offset + 1, now)
        return None

    def seen(self, tp: TP, offset: int) -> bool:
        """``offset`` was processed here since counting started (or lies below where it started): a
        re-delivery, after a re-read that sought back over it."""
        part = self._parts.get(tp)
        return part is not None and (offset < part.next or offset in part.ahead)

    def committable(self, tp: TP) -> int | None:
        """The first offset of ``tp`` not processed, or None if not counted here."""
        part = self._parts.get(tp)
        return None if part is None else part.next

    def to_commit(self, tp: TP) -> int | None:
        """The offset to commit for ``tp``: the first not processed, once this worker has processed
        something since counting started; else None. Committing the start itself could only move
        the group's offset back, below what the partition's previous worker committed after this
        count started (seen here, at the first assignments)."""
        part = self._parts.get(tp)
        return None if part is None or part.next <= part.start else part.next

    def advance(self, tp: TP, committed: int, now: float | None = None) -> tuple[int, int] | None:
        """Count every offset below ``committed``, the group's committed offset, as processed: a
        worker commits only what it processed (another worker, here before this count started).
        Return (first, last) of the offsets this settled, or None if it settled nothing."""
        part = self._parts.get(tp)
        if part is None or committed <= part.next:
            return None
        settled = (part.next, committed - 1)
        part.ahead = {k for k in part.ahead if k >= committed}
        self._move(part, committed, now)
        return settled

    def _move(self, part: "_Partition", first_unprocessed: int, now: float | None) -> None:
        """Every offset below ``first_unprocessed`` is processed: ``next`` goes there, then on over
        the offsets already processed ahead of it."""
        part.next = first_unprocessed
        while part.next in part.ahead:
            part.ahead.remove(part.next)
            part.next += 1
        part.moved_at = self._clock() if now is None else now
        if not part.ahead:
            part.hole_seen_at = None

    def holes(self, older_than_s: float, now: float | None = None) -> dict[TP, tuple[int, int]]:
        """Holes seen at least ``older_than_s`` ago: {tp: (first, last) offset missing}."""
        now = self._clock() if now is None else now
        return {tp: (p.next, min(p.ahead) - 1) for tp, p in self._parts.items()
                if p.ahead and p.hole_seen_at is not None and now - p.hole_seen_at >= older_than_s}

    def stalled(self, highwaters: dict[TP, int], older_than_s: float,
                now: float | None = None) -> dict[TP, tuple[int, int]]:
        """Partitions whose messages have waited (highwater > next) for ``older_than_s`` without
        progress: {tp: (first, last) offset waiting}. The consumer stopped delivering them (a hole
        at the end). The wait counts from when this call first saw messages waiting since the last
        progress, not from the last progress: a partition idle for a while whose next message has
        just arrived is not stalled (it was, falsely, and re-read what it had just processed)."""
        now = self._clock() if now is None else now
        stalled = {}
        for tp, p in self._parts.items():
            highwater = highwaters.get(tp)
            if highwater is None or highwater <= p.next:
                p.waiting_since = None
                continue
            if p.waiting_since is None or p.waiting_since < p.moved_at:
                p.waiting_since = max(now, p.moved_at)
            if now - p.waiting_since >= older_than_s:
                stalled[tp] = (p.next, highwater - 1)
        return stalled
