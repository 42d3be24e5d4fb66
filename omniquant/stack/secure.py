"""The secure mode's files and broker settings (`omniquant up --secure`).

Everything lives under ``<state_dir>/kafka/secure`` (the directory is 0700)::

    ca.pem  ca-key.pem             the local CA (omniquant.stack.tls)
    broker.crt broker.key broker.pem   every node's certificate (CN=broker; SANs localhost,
                                   127.0.0.1): its SASL_SSL listener and, as both server and
                                   client, the mutual-TLS controller listener
    credentials.json               SCRAM-SHA-512 password of each principal (0600)

Clients speak SASL_SSL with SCRAM-SHA-512 and trust ``ca.pem``; each component has its own
principal (``User:<component>``) so the authorizer can tell them apart. The controller
listener has no SASL (SCRAM credentials live in the metadata the controllers serve, so they
cannot authenticate each other with it): it is mutual TLS, and a principal mapping rule turns
the certificate's CN into ``User:broker``. ``User:broker`` and ``User:admin`` are the super
users; every other principal gets only what the ACLs grant (no ACL: denied).
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from core.errors import ConfigError
from omniquant.stack.tls import CertificateAuthority, IssuedCertificate, write_private

__all__ = [
    "ADMIN",
    "BROKER",
    "MECHANISM",
    "SUPER_USERS",
    "MountedSecrets",
    "StackSecrets",
    "broker_security_properties",
    "export_for_containers",
]

MECHANISM = "SCRAM-SHA-512"
BROKER = "broker"  # inter-broker SASL user and the CN of the nodes' certificate
ADMIN = "admin"  # the operator's CLI: topics, ACLs, users, the kill switch
SUPER_USERS = (BROKER, ADMIN)
# CN=broker,... → broker (the mTLS controller listener's principal); anything else as Kafka
# would name it, so no other certificate maps onto a super user by accident.
_PRINCIPAL_RULES = "RULE:^CN=([a-zA-Z0-9._-]+)$/$1/,DEFAULT"


class StackSecrets:
    """CA, broker certificate and SCRAM passwords of one state directory, made on first use."""

    def __init__(self, state_dir: Path, *, directory: Path | None = None) -> None:
        """The local stack's (``<state_dir>/kafka/secure``), or those of a deployment in a
        ``directory`` of its own (`omniquant secure init`)."""
        self.directory = (
            directory.resolve() if directory else state_dir.resolve() / "kafka" / "secure"
        )
        self.ca = CertificateAuthority(self.directory)
        self.credentials_path = self.directory / "credentials.json"

    @classmethod
    def in_directory(cls, directory: Path) -> StackSecrets:
        return cls(directory, directory=directory)

    @property
    def ca_path(self) -> Path:
        return self.ca.cert_path

    def exists(self) -> bool:
        return self.ca.cert_path.is_file() and self.credentials_path.is_file()

    def ensure(self, hosts: tuple[str, ...] = ()) -> StackSecrets:
        """The CA, the broker's certificate (valid for localhost and ``hosts``) and the
        broker's and admin's passwords."""
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        self.ca.ensure()
        self.broker_certificate(hosts)
        self.passwords(SUPER_USERS)
        return self

    def broker_certificate(self, hosts: tuple[str, ...] = ()) -> IssuedCertificate:
        """The nodes' certificate, issued once (reissuing would change it under a running
        cluster), valid for localhost and ``hosts``."""
        issued = IssuedCertificate(
            BROKER,
            cert=self.directory / f"{BROKER}.crt",
            key=self.directory / f"{BROKER}.key",
            bundle=self.directory / f"{BROKER}.pem",
        )
        if issued.bundle.is_file() and issued.cert.is_file():
            return issued
        return self.ca.issue(BROKER, server=True, hosts=hosts)

    def _load(self) -> dict[str, str]:
        try:
            data = json.loads(self.credentials_path.read_text())
        except FileNotFoundError:
            return {}
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise ValueError(f"{self.credentials_path} is not a JSON object of passwords")
        return data

    def passwords(self, principals: tuple[str, ...] | list[str]) -> dict[str, str]:
        """``principal → password`` for each of ``principals``, generating the missing ones
        (stored 0600; a password is never printed or logged)."""
        known = self._load()
        missing = [p for p in principals if p not in known]
        if missing:
            for principal in missing:
                known[principal] = secrets.token_urlsafe(24)
            self.directory.mkdir(parents=True, exist_ok=True)
            write_private(self.credentials_path, json.dumps(known, indent=1).encode())
        return {p: known[p] for p in principals}

    def password(self, principal: str) -> str:
        return self.passwords([principal])[principal]


class MountedSecrets:
    """What a deployment's container sees of :func:`export_for_containers`' files, mounted
    one by one (compose ``secrets:``, a Kubernetes Secret volume) into ``directory``:
    ``kafka-ca`` and ``kafka-password-<principal>``. Read only: a missing one is an error."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @property
    def ca_path(self) -> Path:
        return self.directory / "kafka-ca"

    def exists(self) -> bool:
        return self.ca_path.is_file()

    def password(self, principal: str) -> str:
        path = self.directory / f"kafka-password-{principal}"
        try:
            password = path.read_text().rstrip("\r\n")
        except OSError as exc:
            raise ConfigError(f"{path}: the password of {principal!r} ({exc.strerror})") from None
        if not password:
            raise ConfigError(f"{path}: the password of {principal!r} is empty")
        return password

    def passwords(self, principals: tuple[str, ...] | list[str]) -> dict[str, str]:
        return {p: self.password(p) for p in principals}


def export_for_containers(
    secrets_: StackSecrets, principals: tuple[str, ...] | list[str], hosts: tuple[str, ...]
) -> list[Path]:
    """What a deployment mounts, under ``secrets_.directory`` (`omniquant secure init`):
    ``ca.pem``, the broker's ``broker.pem`` key store (valid for ``hosts``) and
    ``passwords/<principal>`` for each principal and the super users. Existing files are
    kept. The directory is 0700; the mounted files in it are 0644 because Docker Compose
    bind-mounts a file secret with the host file's owner and mode, and the containers run as
    other users (the broker as 1000, the stages as 10001). Returns the files written."""
    secrets_.ensure(hosts)
    broker = secrets_.broker_certificate(hosts)
    everyone = [*SUPER_USERS, *(p for p in principals if p not in SUPER_USERS)]
    passwords = secrets_.passwords(everyone)
    folder = secrets_.directory / "passwords"
    folder.mkdir(exist_ok=True)
    written = [secrets_.ca_path, broker.bundle]
    for principal, password in passwords.items():
        path = folder / principal
        if not path.is_file():
            write_private(path, password.encode())
        written.append(path)
    for path in written:
        os.chmod(path, 0o644)
    return written


def broker_security_properties(secrets_: StackSecrets, port: int) -> dict[str, str]:
    """server.properties entries of a secure node (listeners included)."""
    cert = secrets_.broker_certificate()
    broker_password = secrets_.password(BROKER)
    jaas = (
        "org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="{BROKER}" password="{broker_password}";'
    )
    return {
        "advertised.listeners": f"SASL_SSL://127.0.0.1:{port}",
        "inter.broker.listener.name": "SASL_SSL",
        "listener.security.protocol.map": "CONTROLLER:SSL,SASL_SSL:SASL_SSL",
        "sasl.enabled.mechanisms": MECHANISM,
        "sasl.mechanism.inter.broker.protocol": MECHANISM,
        "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": jaas,
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": str(cert.bundle),
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(secrets_.ca_path),
        "listener.name.controller.ssl.client.auth": "required",
        "ssl.principal.mapping.rules": _PRINCIPAL_RULES,
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "super.users": ";".join(f"User:{name}" for name in SUPER_USERS),
        "allow.everyone.if.no.acl.found": "false",
    }
