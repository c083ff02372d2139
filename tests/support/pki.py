"""Certificates for tests: CAs and leaf certificates from stackgen's own factory.

:func:`make_ca` and :func:`make_leaf` wrap :mod:`stackgen.common.certs` (the one place
certificates are made) with validity periods around now; a :class:`Pair` writes itself
as PEM files.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from stackgen.common import certs

NOW = dt.datetime.now(dt.UTC)


@dataclass
class Pair:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    def write(self, folder: Path, name: str) -> tuple[Path, Path]:
        crt, key = folder / f"{name}.crt", folder / f"{name}.key"
        crt.write_text(self.pem)
        key.write_bytes(certs.private_pem(self.key))
        return crt, key


def make_ca(cn: str) -> Pair:
    cert, key = certs.make_ca(
        cn, not_before=NOW - dt.timedelta(days=1), not_after=NOW + dt.timedelta(days=30)
    )
    return Pair(cert, key)


def make_leaf(
    ca: Pair,
    cn: str,
    *,
    usage: x509.ObjectIdentifier = ExtendedKeyUsageOID.CLIENT_AUTH,
    sans: list[x509.GeneralName] | None = None,
    not_after: dt.datetime | None = None,
) -> Pair:
    cert, key = certs.make_leaf(
        ca.cert,
        ca.key,
        cn,
        usage=usage,
        sans=sans,
        not_before=NOW - dt.timedelta(days=2),
        not_after=not_after or NOW + dt.timedelta(days=10),
    )
    return Pair(cert, key)
