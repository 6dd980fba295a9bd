"""TLS for the server and for ``mcl``'s connections, and the check that says
when a listening address is exposed."""

from __future__ import annotations

import ipaddress
import os
import ssl

from ..protocols.auth import PathLike


def server_context(cert: PathLike, key: PathLike | None = None, ca: PathLike | None = None) -> ssl.SSLContext:
    """A TLS 1.2+ server context; with ``ca``, clients must present a certificate it signed."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    if ca is not None:
        context.load_verify_locations(ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(
    ca: PathLike | None = None, cert: PathLike | None = None, key: PathLike | None = None
) -> ssl.SSLContext:
    """A TLS client context that verifies the server (against ``ca``, else the
    system's certificates) and its host name; ``cert`` is the client's own."""
    context = ssl.create_default_context(cafile=os.fspath(ca) if ca is not None else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None:
        context.load_cert_chain(cert, key)
    return context


def is_loopback(host: str) -> bool:
    """Whether a numeric listening address is reachable from this machine only."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, tls: bool, client_certs: bool, auth: bool) -> str | None:
    """What is unsafe about listening on ``host`` this way, or None if nothing is."""
    if is_loopback(host):
        return None
    if not tls and not auth:
        return (
            f"listening on {host} with neither TLS nor an auth file: anyone who can reach this address "
            "can read and change every item (use --tls-cert/--tls-key and --auth-file, or listen on 127.0.0.1)"
        )
    if not tls:
        return f"listening on {host} without TLS: passwords and data cross the network in clear text"
    if not auth and not client_certs:
        return (
            f"listening on {host} with TLS but neither client certificates (--tls-ca) nor an auth file: "
            "anyone who can reach this address can read and change every item"
        )
    return None
