"""The producer rides out a broker outage far longer than its request timeout, losing nothing."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from confluent_kafka import KafkaError

from quax_faust.stream import metrics
from quax_faust.tools.launch import Broker, Workers, free_port, wait_for_run
from quax_faust.ingest.feed import Checkpoint
from quax_faust.ingest.producer import produce_directory
from quax_faust.ingest.sender import (DaqProducer, ProduceReport, SendError, _FileInFlight, _Sending,
                                      backoff_s, is_retriable)
from tests.conftest import end_outage_drill, stack_settings, wait_until, write_synthetic_run
from tests.oracle import assert_run_matches_oracle
from tests.secure_kafka import running_secure_broker, secure_settings
from tests.test_reliability import N_SAMPLES, produce_in_background


def producer_metric(name: str) -> float:
    """A producer metric read in-process (the background producer shares this process)."""
    return metrics.PRODUCER_REGISTRY.get_sample_value(name) or 0.0


def test_backoff_doubles_from_one_second_to_a_cap():
    assert [backoff_s(k) for k in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
    assert backoff_s(10_000) == 30  # weeks of attempts: no overflow, still the cap
    assert [backoff_s(k, first_s=0.5, cap_s=3) for k in (1, 2, 3, 4)] == [0.5, 1, 2, 3]


@pytest.mark.broker
@pytest.mark.slow
def test_producer_waits_for_the_broker_and_resends_the_files_in_flight(tmp_path):
    daq_dir = write_synthetic_run(tmp_path / "daq", 16, N_SAMPLES, seed=11, tones=((300_000.0, 0.1),))
    own = Broker(port=free_port(2), data_dir=tmp_path / "kafka-own").start()
    producer = None
    try:
        # Batches of two 98 kB messages: a file (5 messages) fills them, as a real one (22 messages
        # of 3 MiB) fills 16 MiB batches, so send() itself waits for room while the broker is away.
        settings = stack_settings(own, tmp_path / "var", workers=2, slices_per_message=4,
                                  max_message_bytes=256 * 1024, producer_request_timeout_s=3.0)
        workers = Workers(settings, tmp_path / "logs").start()
        try:
            workers.wait_assigned()
            retries_before = producer_metric("quax_producer_send_retries_total")
            files_before = producer_metric("quax_producer_files_sent_total")
            producer = produce_in_background(settings, daq_dir, "outage", seconds=14)
            # The broker goes mid-run: two files acked, the producer still sending.
            wait_until(lambda: producer_metric("quax_producer_files_sent_total") >= files_before + 2, 120,
                       "2 files acked")
            assert producer.is_alive() and not producer.errors, producer.errors
            own.stop()
            down_since = time.monotonic()
            # Keep the broker away for 5 request timeouts, and until the producer has retried twice
            # (a loaded machine may be slow to get there); then bring it back.
            while (time.monotonic() - down_since < 15
                   or producer_metric("quax_producer_send_retries_total") < retries_before + 2):
                assert producer.is_alive() and not producer.errors, producer.errors
                assert time.monotonic() - down_since < 120, "the producer never retried"
                time.sleep(0.5)
            assert producer_metric("quax_producer_blocked_seconds") > 0, "the outage is visible"
            own.start()
            producer.join(180)
            assert not producer.is_alive() and not producer.errors, producer.errors
            assert producer_metric("quax_producer_blocked_seconds") == 0, "not blocked any more"
            wait_for_run(settings, "outage", 16, timeout_s=180)
            assert_run_matches_oracle(settings, daq_dir, "outage", range(16))
        finally:
            end_outage_drill(producer, own, workers)
    finally:
        own.stop()


def test_waiting_cures_timeouts_and_lost_connections_not_refusals():
    def error(code: int) -> SendError:
        return SendError(KafkaError(code))

    assert is_retriable(error(KafkaError._MSG_TIMED_OUT))  # librdkafka retried for the whole timeout
    assert is_retriable(error(KafkaError._TRANSPORT))  # connection lost
    assert is_retriable(error(KafkaError._ALL_BROKERS_DOWN))
    assert is_retriable(error(KafkaError._TIMED_OUT))  # no metadata answer
    assert is_retriable(error(KafkaError.REQUEST_TIMED_OUT))
    assert is_retriable(error(KafkaError.NOT_LEADER_FOR_PARTITION))
    assert is_retriable(error(KafkaError.LEADER_NOT_AVAILABLE))
    assert is_retriable(error(KafkaError._FATAL))  # e.g. an idempotence error: a new client starts afresh
    assert is_retriable(error(KafkaError._PURGE_QUEUE))  # dropped with a client that failed
    assert not is_retriable(error(KafkaError.MSG_SIZE_TOO_LARGE))
    assert not is_retriable(error(KafkaError.TOPIC_AUTHORIZATION_FAILED))
    assert not is_retriable(error(KafkaError.SASL_AUTHENTICATION_FAILED))
    assert not is_retriable(error(KafkaError._AUTHENTICATION))
    assert not is_retriable(OSError("disk full"))


@pytest.mark.broker
def test_a_record_too_large_fails_at_once_with_a_clear_message(broker, tmp_path):
    daq_dir = write_synthetic_run(tmp_path / "daq", 2, N_SAMPLES, seed=3)
    # 4 slices of 3072 complex64 samples make 98 kB messages: larger than the broker takes here.
    settings = stack_settings(broker, tmp_path / "var", slices_per_message=4, max_message_bytes=50_000)
    retries_before = producer_metric("quax_producer_send_retries_total")
    with pytest.raises(RuntimeError, match=r"run big file 00000: the broker at .* rejected it: .*"
                                           r"MSG_SIZE_TOO_LARGE.*max_message_bytes is 50000.*not retried"):
        asyncio.run(produce_directory(settings, daq_dir, "big", "max", progress=False))
    assert producer_metric("quax_producer_send_retries_total") == retries_before


@pytest.mark.broker
def test_a_login_refused_when_reconnecting_fails_at_once(tmp_path):
    """The broker comes back with other passwords: waiting cannot help, so the producer stops."""
    with running_secure_broker(tmp_path / "kafka-tls") as secure:
        settings = stack_settings(secure, tmp_path / "var", **secure_settings(secure))

        async def reconnect_with_a_changed_password():
            async with DaqProducer(settings) as producer:
                producer.settings = settings.replace(sasl_password="changed")  # used by its next client
                sending = _Sending(producer, settings, "auth", 1.0, time.monotonic(), ProduceReport(),
                                   tmp_path / "quarantine", False, Checkpoint(None), 2)
                sending.in_flight.append(_FileInFlight(7, np.zeros(3072, np.float32), np.zeros(3072, np.float32)))
                await sending._ride_out(SendError(KafkaError(KafkaError._TRANSPORT, "connection lost")))

        with pytest.raises(RuntimeError, match=r"run auth file 00007: the broker at .* refused the "
                                               r"connection: .*Authentication failed.*not retried"):
            asyncio.run(reconnect_with_a_changed_password())
