"""TLS for tests against the emulator: a throwaway CA (trustme) the client trusts alone."""

from __future__ import annotations

import ssl

import trustme


def tls_contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context with a certificate for 127.0.0.1, client context that trusts only the
    throwaway CA that signed it)."""
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server, client
