"""Fetch responses read from the socket in large pieces, without pausing the socket for each one.

aiokafka reads each fetch response (up to 16 MiB here, several 3 MiB slice messages) through an
asyncio StreamReader with a 64 KiB limit, from a transport that reads 256 KiB at a time. Past
128 KiB buffered the reader pauses the transport, and the read of the response resumes it: for
every 256 KiB piece, a recv, a pause and a resume (two epoll_ctl calls) and a task wake-up, 64
of each per 16 MiB response, in every consumer (py-spy: ~10 % of a worker's samples were in this
read path at max pace).

``install()`` raises the reader's limit to ``READER_LIMIT_BYTES`` (the transport pauses only past
twice that: a 16 MiB response is read without a pause) and the transport's piece to
``READ_PIECE_BYTES``. Memory: each connection may buffer up to twice the limit before it pauses;
a consumer has one fetch connection per broker. Called explicitly (never on import) by the
workers and by the bench's consume-only ceiling, which must read as the workers do. (The live
campaign reads only file spectra, a few 10 kB each: it keeps aiokafka's defaults.)
"""

from __future__ import annotations

READER_LIMIT_BYTES = 16 << 20
"""aiokafka's StreamReader limit (64 KiB in aiokafka 0.12): the transport pauses past twice it."""
READ_PIECE_BYTES = 1 << 20
"""The most one recv() of an asyncio socket transport reads (256 KiB in Python 3.11)."""

_installed = False


def install() -> None:
    """Raise aiokafka's reader limit and asyncio's socket read size in this process; idempotent."""
    global _installed
    if _installed:
        return
    from asyncio import selector_events

    from aiokafka import conn

    conn.READER_LIMIT = max(conn.READER_LIMIT, READER_LIMIT_BYTES)
    transport = selector_events._SelectorSocketTransport
    transport.max_size = max(transport.max_size, READ_PIECE_BYTES)
    _installed = True


def installed() -> bool:
    return _installed
