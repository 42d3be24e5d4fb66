"""TLS material of the local stack's secure mode: a private CA and the certificates it signs.

Kafka reads PEM key stores directly (KIP-651), so no keytool or JKS is needed: a node's
``<name>.pem`` holds its unencrypted PKCS#8 key followed by its certificate and the CA's
(``ssl.keystore.type=PEM``), and ``ca.pem`` is every client's and broker's trust store.
Keys are written 0600. Nothing here is a secret for production: it is a local, throwaway CA.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CertificateAuthority", "IssuedCertificate", "write_private"]

_VALID_DAYS = 365
_LOCAL_NAMES = ("localhost",)
_LOCAL_IPS = ("127.0.0.1", "::1")


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    """Files of one certificate the CA signed."""

    common_name: str
    cert: Path  # the certificate alone
    key: Path  # its private key alone (0600)
    bundle: Path  # key + certificate + CA: a PEM key store (0600)


class CertificateAuthority:
    """A CA under ``directory`` (``ca.pem``, ``ca-key.pem``), made on first use."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.cert_path = directory / "ca.pem"
        self.key_path = directory / "ca-key.pem"

    def ensure(self, common_name: str = "omniquant-local-ca") -> CertificateAuthority:
        """Create the CA unless its files exist; return self."""
        if self.cert_path.is_file() and self.key_path.is_file():
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=_VALID_DAYS * 5))
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
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        write_private(self.key_path, _key_pem(key))
        self.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return self

    def issue(
        self, common_name: str, *, server: bool, hosts: tuple[str, ...] = ()
    ) -> IssuedCertificate:
        """Sign a certificate for ``common_name``: a server one valid for localhost,
        127.0.0.1 and ``hosts`` (brokers; a container's service name), or a client one
        (mutual TLS). Reissued on every call."""
        self.ensure()
        ca_key = serialization.load_pem_private_key(self.key_path.read_bytes(), password=None)
        if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
            raise TypeError(f"{self.key_path} is not an EC key")
        ca_cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        usage = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=_VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usage if server else usage[1:]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
        )
        if server:
            dns = dict.fromkeys([*_LOCAL_NAMES, *hosts])  # ordered, no repeats
            names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns]
            names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in _LOCAL_IPS]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        issued = IssuedCertificate(
            common_name,
            cert=self.directory / f"{common_name}.crt",
            key=self.directory / f"{common_name}.key",
            bundle=self.directory / f"{common_name}.pem",
        )
        issued.cert.write_bytes(cert_pem)
        write_private(issued.key, _key_pem(key))
        write_private(issued.bundle, _key_pem(key) + cert_pem + self.cert_path.read_bytes())
        return issued


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to a file only its owner can read (made 0600 before any byte lands)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its old mode through O_CREAT
    with os.fdopen(fd, "wb") as out:  # write() of a file object writes every byte
        out.write(data)
