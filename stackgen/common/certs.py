"""Certificates: the metrics adapter's serving certificate, and the pieces tests reuse.

``stackgen init`` makes a private CA and a certificate for the adapter's Service name
(:func:`generate_adapter_certs`); the CA's key is thrown away right after signing: to
rotate, generate both again.  The adapter serves a throwaway :func:`self_signed_pair`
when it is given no certificate.  :func:`make_ca` and :func:`make_leaf` are the one
certificate factory, also for the tests' front proxy and client certificates.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from stackgen.common.names import adapter_service_names


def _builder(
    common_name: str,
    issuer: x509.Name | None,
    key: ec.EllipticCurvePrivateKey,
    not_before: dt.datetime,
    not_after: dt.datetime,
) -> x509.CertificateBuilder:
    """A certificate for ``key`` named ``common_name`` (self-issued without ``issuer``)."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer or subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )


def make_ca(
    common_name: str, *, not_before: dt.datetime, not_after: dt.datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed CA (ECDSA P-256) that may sign leaf certificates only."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder(common_name, None, key, not_before, not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def make_leaf(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    common_name: str,
    *,
    not_before: dt.datetime,
    not_after: dt.datetime,
    usage: x509.ObjectIdentifier = ExtendedKeyUsageOID.SERVER_AUTH,
    sans: list[x509.GeneralName] | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A leaf certificate (ECDSA P-256) signed by ``ca_key`` for one extended key usage."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        _builder(common_name, ca_cert.subject, key, not_before, not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def adapter_certs(
    namespace: str, *, days: int = 825
) -> tuple[x509.Certificate, x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A new CA and the adapter's serving certificate (and key) for ``namespace``."""
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    not_before = now - dt.timedelta(minutes=5)
    not_after = now + dt.timedelta(days=days)
    ca, ca_key = make_ca(
        f"stackgen metrics adapter CA ({namespace})", not_before=not_before, not_after=not_after
    )
    names = adapter_service_names(namespace)
    cert, key = make_leaf(
        ca,
        ca_key,
        names[2],
        not_before=not_before,
        not_after=not_after,
        sans=[x509.DNSName(n) for n in names],
    )
    return ca, cert, key


def generate_adapter_certs(namespace: str, dest: Path, *, days: int = 825) -> dict[str, Path]:
    """Write ca.crt, tls.crt and tls.key (mode 0600) into ``dest``; return their paths."""
    ca, cert, key = adapter_certs(namespace, days=days)
    paths = {"ca": dest / "ca.crt", "cert": dest / "tls.crt", "key": dest / "tls.key"}
    write_pems(paths, ca, cert, key)
    return paths


def write_pems(
    paths: dict[str, Path],
    ca: x509.Certificate,
    cert: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
) -> None:
    """Write ``ca``, ``cert`` and ``key`` (PKCS #8, mode 0600) as PEM to ``paths``.

    ``paths`` has the keys ``ca``, ``cert`` and ``key``; missing folders are made.
    """
    for path in paths.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(private_pem(key))
    paths["key"].chmod(0o600)


def self_signed_pair(names: list[str], *, days: int = 365) -> tuple[bytes, bytes]:
    """A throwaway self-signed serving certificate and its key (PEM) for ``names``."""
    now = dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    start, end = now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)
    cert = (
        _builder(names[0], None, key, start, end)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), private_pem(key)


def private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """A private key as unencrypted PKCS #8 PEM."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
