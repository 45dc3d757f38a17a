"""A real broker that accepts only SASL/SCRAM over TLS (ops/kafka/broker.sh: KAFKA_TLS=1 and
KAFKA_SASL_USERS), and the settings a client needs to log in to it."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from quax_faust.tools.launch import Broker, free_port

USERNAME, PASSWORD = "quax", "correct-horse"


@contextmanager
def running_secure_broker(data_dir: Path) -> Iterator[Broker]:
    """A SASL_SSL broker with one SCRAM user, on a free 127.0.0.1 port; stopped on exit."""
    broker = Broker(port=free_port(2), data_dir=data_dir,
                    env={"KAFKA_TLS": "1", "KAFKA_SASL_USERS": f"{USERNAME}:{PASSWORD}"}).start()
    try:
        yield broker
    finally:
        broker.stop()


def secure_settings(broker: Broker) -> dict[str, str]:
    """Settings fields that log in to broker: SASL_SSL as USERNAME, trusting its self-signed certificate."""
    return dict(security_protocol="SASL_SSL", sasl_username=USERNAME, sasl_password=PASSWORD,
                ssl_cafile=str(broker.data_dir / "tls" / "ca.pem"))
