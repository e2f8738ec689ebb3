"""How mlplat proves itself to Redis and Kafka: TLS client files and SASL logins, checked at start-up.

Production services (Confluent Cloud, MSK, Azure Event Hubs, managed Redis) require TLS and a login; a
setting that cannot work (a missing or broken PEM file) must stop start-up naming its key, not surface
later as a connection error.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mlplat.errors import ConfigError

SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
SASL_MECHANISMS: tuple[SaslMechanism, ...] = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a TLS client; `section` names the settings they came from in errors."""

    section: str
    ca_file: Path | None = None
    """CA bundle the server's certificate may chain to, besides the system's CAs (as redis-py does)."""
    cert_file: Path | None = None
    """Client certificate (chain) for servers asking for one (mutual TLS); goes with key_file."""
    key_file: Path | None = None

    def context(self) -> ssl.SSLContext:
        """A verifying client context (certificate and host name); a missing or broken file is a ConfigError
        naming its key."""
        context = ssl.create_default_context()
        if self.ca_file is not None:
            try:
                context.load_verify_locations(cafile=self.ca_file)
            except OSError as e:  # ssl.SSLError (not PEM) is one too
                raise self._bad("tls_ca_file", self.ca_file, e, "a PEM CA bundle") from None
        if (self.cert_file is None) != (self.key_file is None):
            missing = "tls_key_file" if self.key_file is None else "tls_cert_file"
            raise ConfigError(f"config: {self.section}.tls_cert_file and {self.section}.tls_key_file go "
                              f"together: {self.section}.{missing} is not set")
        if self.cert_file is not None and self.key_file is not None:
            for key, path in (("tls_cert_file", self.cert_file), ("tls_key_file", self.key_file)):
                if not path.is_file():
                    raise ConfigError(f"config: {self.section}.{key} = {str(path)!r}: no such file")
            try:
                context.load_cert_chain(self.cert_file, self.key_file)
            except OSError as e:
                raise self._bad("tls_cert_file", self.cert_file, e,
                                f"a PEM certificate matching {self.section}.tls_key_file") from None
        return context

    def _bad(self, key: str, path: Path | None, error: OSError, expected: str) -> ConfigError:
        where = f"config: {self.section}.{key} = {str(path)!r}"
        if isinstance(error, ssl.SSLError):
            return ConfigError(f"{where}: not {expected} ({error.reason or error})")
        return ConfigError(f"{where}: cannot read ({error.strerror})")


@dataclass(frozen=True)
class SaslLogin:
    """A Kafka SASL login; the password never shows in repr."""

    mechanism: SaslMechanism
    username: str
    password: str = field(repr=False)
