"""The side port's TLS: the server SSLContext built from `http.tls`, and its certificate reloaded in place."""

from __future__ import annotations

import ssl

from feedd.config.values import TlsConfig
from feedd.errors import StartupError


def server_context(tls: TlsConfig) -> ssl.SSLContext:
    """TLS 1.2 at least, the stdlib's secure defaults otherwise; the chain is loaded now so that a bad
    file stops the start, naming it, rather than failing every handshake later."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    load(context, tls)
    return context


def load(context: ssl.SSLContext, tls: TlsConfig) -> None:
    """(Re)load the certificate chain and key: new connections use them, open ones keep theirs."""
    try:
        context.load_cert_chain(str(tls.cert), str(tls.key))
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
        raise StartupError(f"cannot load the TLS certificate {tls.cert} with its key {tls.key}: {reason} "
                           "(http.tls)") from None
