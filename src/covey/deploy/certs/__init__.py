"""Certificate tooling for a deployed federation (mutual TLS).

A federation directory holds one private certificate authority (CA), the
server's certificate, one certificate per client and a revocation list::

    DIR/
      ca.pem          CA certificate (public, give it to every party)      0644
      ca.key          CA private key (keep it offline and secret)          0600
      server.pem      server certificate, signed by the CA                  0644
      server.key      server private key                                   0600
      revoked.json    serials of revoked client certificates               0644
      clients/        <client_id>.pem and <client_id>.key per client       0700

Every file is written atomically (temporary file + ``os.replace``) and every
private key is created with mode 0600 from the start, so it is never readable
by others, not even for an instant.  Everything is done with the
``cryptography`` library; no ``openssl`` process is run.

The gRPC server authenticates clients with the TLS handshake
(``require_client_auth=True``, ``root_certificates=ca.pem``) and then reads the
peer certificate from ``context.auth_context()["x509_pem_cert"]``:
:func:`identity_from_cert` gives the client id, :func:`is_revoked` tells
whether it has been revoked and :func:`verify_chain` re-checks the chain.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from covey.core._lazy import lazy_exports

if TYPE_CHECKING:  # loaded on first use: cryptography is slow to import
    from covey.deploy.certs._ca import FederationPaths, init_federation, renew_server
    from covey.deploy.certs._common import (
        CA_CERT,
        CA_KEY,
        CLIENTS_DIRNAME,
        REVOKED,
        SERVER_CERT,
        SERVER_KEY,
        KeyType,
        validate_client_id,
    )
    from covey.deploy.certs._inspect import (
        IssuedClient,
        identity_from_cert,
        list_clients,
        verify_chain,
    )
    from covey.deploy.certs._issue import ClientPaths, issue_client, parse_hosts
    from covey.deploy.certs._revocation import is_revoked, load_revoked, revoke

__all__ = [
    "CA_CERT",
    "CA_KEY",
    "CLIENTS_DIRNAME",
    "REVOKED",
    "SERVER_CERT",
    "SERVER_KEY",
    "ClientPaths",
    "FederationPaths",
    "IssuedClient",
    "KeyType",
    "identity_from_cert",
    "init_federation",
    "is_revoked",
    "issue_client",
    "list_clients",
    "load_revoked",
    "parse_hosts",
    "renew_server",
    "revoke",
    "validate_client_id",
    "verify_chain",
]

if not TYPE_CHECKING:
    __getattr__, __dir__ = lazy_exports(
        __name__,
        {
            "CA_CERT": "_common",
            "CA_KEY": "_common",
            "CLIENTS_DIRNAME": "_common",
            "ClientPaths": "_issue",
            "FederationPaths": "_ca",
            "IssuedClient": "_inspect",
            "KeyType": "_common",
            "REVOKED": "_common",
            "SERVER_CERT": "_common",
            "SERVER_KEY": "_common",
            "identity_from_cert": "_inspect",
            "init_federation": "_ca",
            "is_revoked": "_revocation",
            "issue_client": "_issue",
            "list_clients": "_inspect",
            "load_revoked": "_revocation",
            "parse_hosts": "_issue",
            "renew_server": "_ca",
            "revoke": "_revocation",
            "validate_client_id": "_common",
            "verify_chain": "_inspect",
        },
    )
