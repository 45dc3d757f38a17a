"""Security defaults: loopback only, SASL/SCRAM over TLS against a real broker configured that way."""

from __future__ import annotations

import asyncio
import ipaddress

import psutil
import pytest

from quax_faust.core import daq, synth
from quax_faust.tools.launch import Workers, wait_for_run
from quax_faust.ingest.producer import produce_directory
from quax_faust.connection import partition_counts
from quax_faust.stream.topics import ensure_topics
from tests.conftest import stack_settings
from tests.oracle import assert_run_matches_oracle
from tests.secure_kafka import running_secure_broker, secure_settings

pytestmark = [pytest.mark.broker, pytest.mark.slow]  # a TLS + SASL broker of its own


def is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    return getattr(address, "ipv4_mapped", None) and address.ipv4_mapped.is_loopback or address.is_loopback


@pytest.fixture
def secure_broker(tmp_path):
    with running_secure_broker(tmp_path / "kafka-tls") as broker:
        yield broker


def test_pipeline_over_sasl_scram_and_tls(secure_broker, tmp_path):
    settings = stack_settings(secure_broker, tmp_path / "var", workers=2, slices_per_message=4,
                              **secure_settings(secure_broker))
    model = synth.SynthModel()
    for k in range(4):
        daq.write_pair(tmp_path / "daq", k, synth.synth_file(k, 3072 * 12, model))
    workers = Workers(settings, tmp_path / "logs").start()
    try:
        workers.wait_assigned()
        asyncio.run(produce_directory(settings, tmp_path / "daq", "tls", "max", progress=False))
        wait_for_run(settings, "tls", 4)
        assert_run_matches_oracle(settings, tmp_path / "daq", "tls", range(4))
        # Everything the workers listen on is loopback.
        for proc in workers.procs.values():
            listening = [c.laddr for c in psutil.Process(proc.pid).net_connections("inet")
                         if c.status == psutil.CONN_LISTEN]
            assert listening and all(is_loopback(addr.ip) for addr in listening), listening
    finally:
        workers.stop()

    wrong = settings.replace(sasl_password="wrong")
    with pytest.raises(RuntimeError, match="refused the connection.*Authentication failed"):
        asyncio.run(ensure_topics(wrong, wait_s=20))
    with pytest.raises(RuntimeError, match="refused the connection.*Authentication failed"):
        asyncio.run(partition_counts(wrong, [settings.slices_topic], wait_s=20))  # quax reprocess's lookup
    plaintext = settings.replace(security_protocol="PLAINTEXT")
    with pytest.raises(RuntimeError, match="no Kafka broker answers"):
        asyncio.run(ensure_topics(plaintext, wait_s=3))


def test_broker_listens_on_loopback_only(broker):
    java = psutil.Process(int((broker.data_dir.parent / (broker.data_dir.name + ".pid")).read_text()))
    listening = [c.laddr for c in java.net_connections("inet") if c.status == psutil.CONN_LISTEN]
    assert {a.port for a in listening} >= {broker.port, broker.port + 1}
    assert all(is_loopback(a.ip) for a in listening), listening
