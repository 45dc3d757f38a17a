"""Ports for the processes the tests and benchmarks start (quax_faust/tools/launch.py)."""

from __future__ import annotations

import socket

from quax_faust.tools.launch import _ephemeral_low, free_port


def test_free_ports_come_from_below_the_ephemeral_range_and_are_free():
    """A port the kernel may hand to an outgoing connection can be taken before our server binds
    it (a worker found its port held a minute after it was chosen): free_port stays below that
    range, and every port of the block binds."""
    low = _ephemeral_low()
    bases = {free_port(4) for _ in range(20)}
    assert len(bases) > 1  # chosen at random, not the same block for every caller
    for base in bases:
        if low - 4 > 12_000:
            assert 10_000 <= base and base + 3 < low
        for port in range(base, base + 4):
            with socket.socket() as s:
                s.bind(("127.0.0.1", port))
