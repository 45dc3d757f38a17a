"""How every Kafka client of quax-stream connects: plaintext, TLS, SASL/SCRAM, from the settings.

One place for the broker connection options, used by the producer, the admin client (topics), the
Faust workers and the test readers. Defaults: PLAINTEXT to 127.0.0.1 (a single-machine setup).
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Any

from .settings import Settings

if TYPE_CHECKING:  # faust is imported only by the workers: importing it reads sys.argv (--loop!)
    import faust

PROTOCOLS = {"PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"}


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """A TLS context verifying the broker against settings.ssl_cafile (None without TLS)."""
    if "SSL" not in _protocol(settings):
        return None
    if not settings.ssl_cafile:
        raise ValueError(f"security_protocol {settings.security_protocol} needs ssl_cafile (QUAX_SSL_CAFILE)")
    context = ssl.create_default_context(cafile=settings.ssl_cafile)
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
        if not settings.ssl_cafile:
            raise ValueError(f"security_protocol {settings.security_protocol} needs ssl_cafile (QUAX_SSL_CAFILE)")
        properties.update({"ssl.truststore.type": "PEM", "ssl.truststore.location": settings.ssl_cafile,
                           "ssl.endpoint.identification.algorithm": "https"})
    if protocol.startswith("SASL"):
        mechanism = settings.sasl_mechanism.upper()
        if mechanism not in LOGIN_MODULES:
            raise ValueError(f"sasl_mechanism {settings.sasl_mechanism!r}: expected one of "
                             f"{sorted(LOGIN_MODULES)}")
        properties["sasl.mechanism"] = mechanism
        properties["sasl.jaas.config"] = (f"{LOGIN_MODULES[mechanism]} required "
                                          f"username={_jaas_quote(settings.sasl_username)} "
                                          f"password={_jaas_quote(settings.sasl_password)};")
    return properties


def _jaas_quote(value: str) -> str:
    """value as a double-quoted JAAS option (Kafka parses it with java.io.StreamTokenizer, which
    undoes backslash escapes and would end the string at a raw line break)."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'
