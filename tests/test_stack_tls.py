"""The secure mode's CA and certificates, checked by tools we did not write: OpenSSL's
``verify`` and a real TLS handshake between Python's ``ssl`` server and client."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import stat
import subprocess
import threading
from pathlib import Path

import pytest

from omniquant.stack.tls import CertificateAuthority, IssuedCertificate


@pytest.fixture(scope="module")
def openssl() -> str:
    found = shutil.which("openssl")
    if found is None:
        message = "openssl not found: install Debian's openssl package (make deps)"
        if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
            pytest.fail(f"{message}; CI must run the TLS checks")
        pytest.skip(message)
    return found


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority(tmp_path / "ca").ensure()


@pytest.fixture
def broker(ca: CertificateAuthority) -> IssuedCertificate:
    return ca.issue("broker", server=True)


def _openssl_verify(
    openssl: str, ca: Path, cert: Path, purpose: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [openssl, "verify", "-CAfile", str(ca), "-purpose", purpose, str(cert)],
        capture_output=True,
        text=True,
        check=False,
    )


def test_openssl_verifies_server_and_client_certificates_and_refuses_another_ca(
    openssl: str, ca: CertificateAuthority, broker: IssuedCertificate, tmp_path: Path
) -> None:
    client = ca.issue("feed", server=False)
    ok = _openssl_verify(openssl, ca.cert_path, broker.cert, "sslserver")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    ok = _openssl_verify(openssl, ca.cert_path, client.cert, "sslclient")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # a client certificate is not a server certificate
    assert _openssl_verify(openssl, ca.cert_path, client.cert, "sslserver").returncode != 0
    other = CertificateAuthority(tmp_path / "other").ensure()
    assert _openssl_verify(openssl, other.cert_path, broker.cert, "sslserver").returncode != 0
    subject = subprocess.run(
        [openssl, "x509", "-noout", "-subject", "-ext", "subjectAltName", "-in", broker.cert],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "CN=broker" in subject or "CN = broker" in subject
    assert "127.0.0.1" in subject and "localhost" in subject


def test_keys_are_owner_only_and_the_ca_is_made_once(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    first = ca.cert_path.read_bytes()
    issued = ca.issue("risk-gate", server=False)
    for path in (ca.key_path, issued.key, issued.bundle):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    # a reissue over key files someone opened up closes them again
    issued.key.chmod(0o644)
    issued.bundle.chmod(0o644)
    issued = ca.issue("risk-gate", server=False)
    for path in (issued.key, issued.bundle):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert CertificateAuthority(tmp_path / "ca").ensure().cert_path.read_bytes() == first
    # the PEM key store holds the key, the certificate and the CA, in that order
    bundle = issued.bundle.read_text()
    assert bundle.index("PRIVATE KEY") < bundle.index("BEGIN CERTIFICATE")
    assert bundle.count("BEGIN CERTIFICATE") == 2


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> str:
    """A TLS handshake over loopback; returns the client certificate's CN the server saw."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    seen: dict[str, object] = {}

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                seen["peer"] = tls.getpeercert()
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError) as exc:
            seen["error"] = exc

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            client_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            assert tls.recv(2) == b"ok"
    finally:
        thread.join(5)
        listener.close()
    peer = seen.get("peer")
    assert isinstance(peer, dict), seen
    return next(v for rdn in peer["subject"] for k, v in rdn if k == "commonName")


def test_mutual_tls_handshake_with_the_issued_files_and_refusal_of_an_untrusted_server(
    ca: CertificateAuthority, broker: IssuedCertificate, tmp_path: Path
) -> None:
    client = ca.issue("execution", server=False)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca.cert_path))
    server_ctx.load_cert_chain(str(broker.cert), str(broker.key))
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_ctx = ssl.create_default_context(cafile=str(ca.cert_path))
    client_ctx.load_cert_chain(str(client.bundle))  # the PEM key store, as Kafka reads it
    assert _handshake(server_ctx, client_ctx) == "execution"

    # a client that trusts another CA refuses the broker
    other = CertificateAuthority(tmp_path / "other").ensure()
    wary = ssl.create_default_context(cafile=str(other.cert_path))
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(server_ctx, wary)
