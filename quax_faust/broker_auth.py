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
