"""Fetch responses read in large pieces (quax_faust/fetch_reads.py): a 16 MiB response read the way
aiokafka reads it (its StreamReader and protocol, over a real local socket) is read without one
pause of the transport once install() has run, where aiokafka's own 64 KiB limit pauses and
resumes it for every piece; the bytes are the same either way."""

from __future__ import annotations

import asyncio
import os
from asyncio import selector_events

import pytest
from aiokafka import conn

from quax_faust import fetch_reads

RESPONSE_BYTES = 16 << 20


def read_one_response(limit: int) -> tuple[bytes, bytes, int]:
    """Serve a size-prefixed response on 127.0.0.1 and read it as aiokafka's connection does
    (size, then readexactly): (sent, read, times the reading transport was paused)."""
    payload = os.urandom(RESPONSE_BYTES)

    async def run():
        async def serve(reader, writer):
            writer.write(len(payload).to_bytes(4, "big") + payload)
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=limit, loop=loop)
        transport, _ = await loop.create_connection(
            lambda: asyncio.StreamReaderProtocol(reader, loop=loop), "127.0.0.1", port)
        pauses = 0
        pause = transport.pause_reading

        def counted_pause():
            nonlocal pauses
            pauses += 1
            pause()

        transport.pause_reading = counted_pause
        size = int.from_bytes(await reader.readexactly(4), "big")
        data = await reader.readexactly(size)
        transport.close()
        server.close()
        await server.wait_closed()
        return data, pauses

    data, pauses = asyncio.run(run())
    return payload, data, pauses


def test_aiokafkas_own_limit_pauses_the_socket_for_every_piece():
    """Why the module exists: with aiokafka's 64 KiB limit a 16 MiB response pauses the transport
    for every piece read (at most 256 KiB each in Python 3.11)."""
    sent, read, pauses = read_one_response(limit=2 ** 16)
    assert read == sent
    assert pauses >= RESPONSE_BYTES // (1 << 20), f"only {pauses} pauses"


def test_after_install_a_whole_response_is_read_without_a_pause():
    fetch_reads.install()
    fetch_reads.install()  # idempotent
    assert fetch_reads.installed()
    assert conn.READER_LIMIT == fetch_reads.READER_LIMIT_BYTES
    assert selector_events._SelectorSocketTransport.max_size == fetch_reads.READ_PIECE_BYTES
    sent, read, pauses = read_one_response(limit=conn.READER_LIMIT)
    assert read == sent
    assert pauses == 0


@pytest.mark.parametrize("limit", [2 ** 16, fetch_reads.READER_LIMIT_BYTES])
def test_the_bytes_read_are_the_bytes_sent_whatever_the_limit(limit):
    sent, read, _ = read_one_response(limit)
    assert read == sent
