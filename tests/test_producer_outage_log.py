"""docs/usage.md on an outage, without a broker: the warning the producer logs at each attempt
(`broker … unreachable since HH:MM:SS (…); resending file N … (attempt k)`), the 1 s, 2 s, ... waits,
and errors that waiting cannot cure (here a topic it may not write to) stopping it at once."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import types

import numpy as np
import pytest
from confluent_kafka import KafkaError

from quax_faust.stream import metrics
from quax_faust.ingest.feed import Checkpoint
from quax_faust.ingest.sender import ProduceReport, SendError, _FileInFlight, _Sending
from quax_faust.settings import Settings


class StubProducer:
    """Stands in for DaqProducer: restart fails `failures` times with a lost connection, then works."""

    def __init__(self, failures: int):
        self.refusal = types.SimpleNamespace(refusal=None)
        self.failures, self.pauses, self.queued, self.acquired = failures, [], [], []

    async def restart(self, pause_s: float) -> None:
        self.pauses.append(pause_s)
        if self.failures:
            self.failures -= 1
            raise SendError(KafkaError(KafkaError._TRANSPORT, "127.0.0.1:9092/bootstrap: Connection refused"))

    async def queue_file(self, run, file_index, i, q, acquired_at_s=float("nan")):
        self.queued.append(file_index)
        self.acquired.append(acquired_at_s)
        done = asyncio.get_running_loop().create_future()
        done.set_result((1, 1, 8))
        return done


@pytest.fixture(autouse=True)
def blocked_gauge_back_to_zero():
    """_Sending points the process-wide quax_producer_blocked_seconds at its outage: not after us."""
    yield
    metrics.PRODUCER_BLOCKED_SECONDS.set_function(lambda: 0.0)


def sending(stub, tmp_path) -> _Sending:
    s = _Sending(stub, Settings(), "run7", 1.0, time.monotonic(), ProduceReport(), tmp_path / "q", False,
                 Checkpoint(None), 2)
    for k in (12, 13):
        s.in_flight.append(_FileInFlight(k, np.zeros(3072, np.float32), np.zeros(3072, np.float32), acquired_at_s=1.7e9 + k))
    return s


def test_each_attempt_is_logged_once_with_the_file_and_the_wait(tmp_path, caplog):
    stub = StubProducer(failures=2)
    caplog.set_level(logging.WARNING, logger="quax_faust")
    asyncio.run(sending(stub, tmp_path)._ride_out(SendError(KafkaError(KafkaError._MSG_TIMED_OUT))))
    assert stub.pauses == [1.0, 2.0, 4.0]  # the third attempt reaches the broker
    assert stub.queued == [12, 13]  # the files in flight, in order, re-sent once
    assert stub.acquired == [1.7e9 + 12, 1.7e9 + 13]  # each with its own acquisition time
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines
    for attempt, (line, wait) in enumerate(zip(lines, ("1", "2", "4")), start=1):
        assert re.fullmatch(rf"broker 127\.0\.0\.1:9092 unreachable since \d\d:\d\d:\d\d \(.+\); resending "
                            rf"file 00012 of run run7 and the later files in flight in {wait} s "
                            rf"\(attempt {attempt}\)", line), line


def test_a_topic_it_may_not_write_to_stops_it_at_once_naming_the_file(tmp_path):
    stub = StubProducer(failures=0)
    with pytest.raises(RuntimeError, match=r"run run7 file 00012: the broker at 127\.0\.0\.1:9092 rejected "
                                           r"it: TOPIC_AUTHORIZATION_FAILED.*; not retried"):
        asyncio.run(sending(stub, tmp_path)._ride_out(SendError(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))))
    assert stub.pauses == []  # no waiting
