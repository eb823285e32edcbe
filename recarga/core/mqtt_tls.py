"""The TLS settings every CPython MQTT client of the project uses (gateway, central).

One CA file is trusted, nothing else (not the system's store): the project CA
(recarga.core.certs) or the operator's. The broker's certificate must name the host the
client connects to (check_hostname), and nothing older than TLS 1.2 is spoken. There is no
switch to skip verification.
"""
from __future__ import annotations

import ssl
from pathlib import Path


def client_context(ca_file: str | Path) -> ssl.SSLContext:
    """A client context trusting `ca_file` (PEM) alone. OSError if unreadable, ssl.SSLError
    if it holds no certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname on
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(cafile=str(ca_file))
    return ctx
