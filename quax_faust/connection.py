"""How every Kafka client of quax-stream connects: plaintext, TLS, SASL/SCRAM, from the settings.

One place for the broker connection options, used by the producer (librdkafka), the admin client
(topics), the Faust workers, the Spark archive reader and the test readers; and the admin connection that tells a
refused login from a broker still starting. Defaults: PLAINTEXT to 127.0.0.1 (a single-machine setup).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError

from quax_faust.settings import Settings

if TYPE_CHECKING:  # faust is imported only by the workers: importing it reads sys.argv (--loop!)
    import faust

log = logging.getLogger(__name__)
PROTOCOLS = {"PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"}


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """A TLS context verifying the broker against settings.ssl_cafile (None without TLS)."""
    if "SSL" not in _protocol(settings):
        return None
    context = ssl.create_default_context(cafile=_cafile(settings))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def client_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for aiokafka's producer, consumer and admin client."""
    protocol = _protocol(settings)
    options: dict[str, Any] = {"bootstrap_servers": settings.broker, "security_protocol": protocol}
    context = ssl_context(settings)
    if context is not None:
        options["ssl_context"] = context
    if protocol.startswith("SASL"):
        options.update(sasl_mechanism=settings.sasl_mechanism, sasl_plain_username=settings.sasl_username,
                       sasl_plain_password=settings.sasl_password)
    return options


def faust_credentials(settings: Settings) -> "faust.auth.Credentials | None":
    """The same connection for a Faust app (broker_credentials=...)."""
    import faust

    protocol = _protocol(settings)
    if protocol.startswith("SASL"):
        return faust.SASLCredentials(username=settings.sasl_username, password=settings.sasl_password,
                                     mechanism=settings.sasl_mechanism, ssl_context=ssl_context(settings))
    if protocol == "SSL":
        return faust.SSLCredentials(ssl_context(settings))
    return None


def _protocol(settings: Settings) -> str:
    protocol = settings.security_protocol.upper()
    if protocol not in PROTOCOLS:
        raise ValueError(f"security_protocol {settings.security_protocol!r}: expected one of {sorted(PROTOCOLS)}")
    if protocol.startswith("SASL") and not settings.sasl_username:
        raise ValueError(f"security_protocol {protocol} needs sasl_username and sasl_password")
    return protocol


LOGIN_MODULES = {"SCRAM-SHA-256": "org.apache.kafka.common.security.scram.ScramLoginModule",
                 "SCRAM-SHA-512": "org.apache.kafka.common.security.scram.ScramLoginModule",
                 "PLAIN": "org.apache.kafka.common.security.plain.PlainLoginModule"}
"""JAAS login module of Kafka's Java client for each SASL mechanism we support."""


def java_client_properties(settings: Settings) -> dict[str, str]:
    """The same connection for Kafka's Java client (Spark's Kafka source: prefix each key with
    "kafka."): bootstrap servers, protocol, the SASL login as a JAAS line, and for TLS the CA file as
    a PEM truststore with hostname verification, as ssl_context does. The password is in
    sasl.jaas.config: never log the result."""
    protocol = _protocol(settings)
    properties = {"bootstrap.servers": settings.broker, "security.protocol": protocol}
    if "SSL" in protocol:
        properties.update({"ssl.truststore.type": "PEM", "ssl.truststore.location": _cafile(settings),
                           "ssl.endpoint.identification.algorithm": "https"})
    if protocol.startswith("SASL"):
        mechanism = _mechanism(settings)
        properties["sasl.mechanism"] = mechanism
        properties["sasl.jaas.config"] = (f"{LOGIN_MODULES[mechanism]} required "
                                          f"username={_jaas_quote(settings.sasl_username)} "
                                          f"password={_jaas_quote(settings.sasl_password)};")
    return properties


def librdkafka_config(settings: Settings) -> dict[str, str]:
    """The same connection for librdkafka (confluent-kafka, the producer's client): bootstrap
    servers, protocol, the SASL login, and for TLS the CA file with hostname verification, as
    ssl_context does. Holds the password: never log the result."""
    protocol = _protocol(settings)
    config = {"bootstrap.servers": settings.broker, "security.protocol": protocol.lower()}
    if "SSL" in protocol:
        config.update({"ssl.ca.location": _cafile(settings), "ssl.endpoint.identification.algorithm": "https"})
    if protocol.startswith("SASL"):
        mechanism = _mechanism(settings)
        config.update({"sasl.mechanism": mechanism, "sasl.username": settings.sasl_username,
                       "sasl.password": settings.sasl_password})
    return config


def _cafile(settings: Settings) -> str:
    """The CA file that TLS verifies the broker against; ValueError without one."""
    if not settings.ssl_cafile:
        raise ValueError(f"security_protocol {settings.security_protocol} needs ssl_cafile (QUAX_SSL_CAFILE)")
    return str(settings.ssl_cafile)


def _mechanism(settings: Settings) -> str:
    """The SASL mechanism, upper case; ValueError for one we do not support."""
    mechanism = settings.sasl_mechanism.upper()
    if mechanism not in LOGIN_MODULES:
        raise ValueError(f"sasl_mechanism {settings.sasl_mechanism!r}: expected one of {sorted(LOGIN_MODULES)}")
    return mechanism


def _jaas_quote(value: str) -> str:
    """value as a double-quoted JAAS option (Kafka parses it with java.io.StreamTokenizer, which
    undoes backslash escapes and would end the string at a raw line break)."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'


# --- the admin connection: partition counts, a refused login told from a broker still starting

class RefusalCatcher(logging.Handler):
    """Keeps the reason aiokafka logs when the broker refuses us (bad password, TLS) rather than
    being down: retrying cannot help then."""

    FATAL = ("Authentication", "SSL", "certificate", "UnsupportedSaslMechanism")

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.refusal: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if any(word in message for word in self.FATAL):
            self.refusal = message


async def connect_admin(settings: Settings, wait_s: float) -> AIOKafkaAdminClient:
    """An admin client, retrying while the broker is still starting (up to wait_s seconds)."""
    deadline = time.monotonic() + wait_s
    client_log = logging.getLogger("aiokafka")
    catcher = RefusalCatcher()
    client_log.addHandler(catcher)
    client_log.propagate = False  # one line per retry is enough
    try:
        while True:
            admin = AIOKafkaAdminClient(**client_options(settings), request_timeout_ms=30000)
            try:
                await admin.start()
                return admin
            except KafkaConnectionError:
                await admin.close()
                if catcher.refusal:
                    raise RuntimeError(f"the broker at {settings.broker} refused the connection: "
                                       f"{catcher.refusal}") from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no Kafka broker answers at {settings.broker} after {wait_s:.0f} s "
                                       f"(is it up? is security_protocol {settings.security_protocol} "
                                       "what it expects?)") from None
                log.info("waiting for the broker at %s", settings.broker)
                await asyncio.sleep(1.0)
    finally:
        client_log.removeHandler(catcher)
        client_log.propagate = True


async def partition_counts(broker: str | Settings, names, wait_s: float = 10.0) -> dict[str, int]:
    """Partition count of each named topic that exists (broker: settings or a plaintext host:port).
    A refused login or TLS handshake, or no broker within wait_s seconds: RuntimeError saying so."""
    settings = broker if isinstance(broker, Settings) else Settings(broker=broker)
    admin = await connect_admin(settings, wait_s)
    try:
        return await existing_partition_counts(admin, names)
    finally:
        await admin.close()


async def existing_partition_counts(admin: AIOKafkaAdminClient, names) -> dict[str, int]:
    listed = set(await admin.list_topics())
    wanted = [n for n in names if n in listed]
    if not wanted:
        return {}
    described = await admin.describe_topics(wanted)
    return {t["topic"]: len(t["partitions"]) for t in described
            if not t.get("error_code") and t.get("partitions")}


async def _covered_offsets(settings: Settings, wait_s: float) -> dict[str, Any]:
    admin = await connect_admin(settings, wait_s)
    try:
        committed = await admin.list_consumer_group_offsets(settings.app_id)
        spectra = (await existing_partition_counts(admin, [settings.spectra_topic])).get(settings.spectra_topic, 0)
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(**client_options(settings), enable_auto_commit=False)
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(settings.spectra_topic, p) for p in range(spectra)])
    finally:
        await consumer.stop()
    return {
        "consumer_group": settings.app_id,
        "slices_topic": settings.slices_topic,
        "slices_committed": {str(tp.partition): meta.offset for tp, meta in sorted(committed.items())
                             if tp.topic == settings.slices_topic},
        "spectra_topic": settings.spectra_topic,
        "spectra_end": {str(tp.partition): offset for tp, offset in sorted(ends.items())},
        "read_at_s": time.time(),
    }


def covered_offsets(settings: Settings, wait_s: float = 10.0) -> dict[str, Any]:
    """Where the live tables stood in the Kafka log: the workers' committed offsets on the slices
    topic per partition (every slice before them is folded into the tables, or rejected) and the
    end offsets of the spectra topic (the spectra of the files finished by then are before them).
    Raises RuntimeError when the broker does not answer within wait_s seconds."""
    return asyncio.run(_covered_offsets(settings, wait_s))
