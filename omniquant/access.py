"""Who may do what on a secure cluster: a principal per component, and the ACLs the stage
registry implies (`omniquant up --secure`, `omniquant acl`).

Each stage is ``User:<stage name>``; besides them, ``replay`` (the replay producer) and
``feed`` (the synthetic feed and every vendor feed of `omniquant produce`) write market data.
A principal gets exactly what its registry entry says it reads and writes (its dead-letter
topic included), its consumer group, Quix's internal topics of that group
(``changelog__<group>--…``, ``repartition__<group>--…``) and the transactional ids it
starts (``<group>…``). Nothing else: the authorizer denies what no ACL allows, so the feed
cannot write orders, and only the risk gate can write approved orders, only execution fills.

On the local stack (:class:`~omniquant.stack.secure.StackSecrets`) each principal's password
is generated once and kept 0600 in the state dir; :func:`component_settings` hands a
component its own identity, and :func:`ensure_access` makes the SCRAM users and ACLs. A
deployment (compose, k8s) keeps the same files in a directory of its own (`omniquant secure
init`), and :func:`apply_access` makes its users and ACLs (`omniquant secure apply`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)
from pydantic import SecretStr

from core.config import Settings
from core.errors import ConfigError, StackError
from core.topics import FEEDS_DEAD_LETTERS, TopicNames
from omniquant.stack.secure import ADMIN, MECHANISM, SUPER_USERS, MountedSecrets, StackSecrets
from omniquant.stages import STAGES, StageSpec

__all__ = [
    "COMPONENTS",
    "Grant",
    "acl_bindings",
    "apply_access",
    "component_settings",
    "ensure_access",
    "grants",
]

# the local stack's files, or a deployment's as its containers mount them
Credentials = StackSecrets | MountedSecrets

# Producers that are not registry stages, and what they write.
_MARKET_WRITERS: dict[str, tuple[str, ...]] = {
    "replay": ("market.trades", "market.quotes"),
}
COMPONENTS: tuple[str, ...] = (*(s.name for s in STAGES), *_MARKET_WRITERS)

_READ = (AclOperation.READ, AclOperation.DESCRIBE, AclOperation.DESCRIBE_CONFIGS)
_WRITE = (AclOperation.WRITE, AclOperation.DESCRIBE, AclOperation.DESCRIBE_CONFIGS)
_GROUP = (AclOperation.READ, AclOperation.DESCRIBE)
_TXN = (AclOperation.WRITE, AclOperation.DESCRIBE)
_LITERAL, _PREFIXED = ResourcePatternType.LITERAL, ResourcePatternType.PREFIXED


@dataclass(frozen=True, slots=True)
class Grant:
    """ALLOW ``operations`` on one resource (a name, or a prefix) to ``principal``."""

    principal: str
    resource: ResourceType
    name: str
    pattern: ResourcePatternType
    operations: tuple[AclOperation, ...]

    def bindings(self) -> list[AclBinding]:
        principal, allow = f"User:{self.principal}", AclPermissionType.ALLOW
        return [
            AclBinding(self.resource, self.name, self.pattern, principal, "*", op, allow)
            for op in self.operations
        ]


def _stage_grants(spec: StageSpec, names: TopicNames) -> list[Grant]:
    who, topic = spec.name, ResourceType.TOPIC
    out: list[Grant] = []
    reads = [*spec.input_topics(names), *(names.name(t) for t in spec.also_reads)]
    for name in dict.fromkeys(reads):
        out.append(Grant(who, topic, name, _LITERAL, _READ))
    if spec.reads_all_records:  # the sink: every dead-letter topic of the namespace too
        out.append(Grant(who, topic, f"{names.prefix}dlq.", _PREFIXED, _READ))
    writes = [names.name(t) for t in spec.outputs]
    if spec.dead_letter:
        writes.append(names.dead_letter(spec.dead_letter))
    for name in writes:
        out.append(Grant(who, topic, name, _LITERAL, _WRITE))
    group = spec.consumer_group(names.prefix)
    if group is not None:
        # the group itself and the readers it derives (`<group>-changelog`, a watcher's
        # `<group>-…`); Quix's state changelogs and repartitions; transactional ids
        out.append(Grant(who, ResourceType.GROUP, group, _PREFIXED, _GROUP))
        for kind in ("changelog", "repartition"):
            out.append(Grant(who, topic, f"{kind}__{group}--", _PREFIXED, (AclOperation.ALL,)))
        out.append(Grant(who, ResourceType.TRANSACTIONAL_ID, group, _PREFIXED, _TXN))
    # readers by assignment (account views, trading-state watchers) name their groups
    # after the namespace: `<prefix><what>-<random>`
    for what in spec.reader_groups:
        out.append(Grant(who, ResourceType.GROUP, f"{names.prefix}{what}-", _PREFIXED, _GROUP))
    if spec.name == "lag-monitor":
        # every group of the cluster, their offsets and the topics they read (it peeks at
        # the records between a group's offset and the end, with its own throwaway groups)
        out.append(Grant(who, ResourceType.GROUP, "*", _LITERAL, (AclOperation.DESCRIBE,)))
        out.append(Grant(who, topic, "*", _LITERAL, (AclOperation.DESCRIBE, AclOperation.READ)))
        out.append(Grant(who, ResourceType.GROUP, "omniquant-lag-peek-", _PREFIXED, _GROUP))
    return out


def grants(prefix: str) -> list[Grant]:
    """Every grant of the namespace ``prefix``: the registry's stages, then the replay."""
    names = TopicNames(prefix)
    out: list[Grant] = []
    for spec in STAGES:
        out.extend(_stage_grants(spec, names))
    for who, topics in _MARKET_WRITERS.items():
        # and the feeds' dead letters: rows it cannot turn into records
        physical = [*(names.name(t) for t in topics), names.dead_letter(FEEDS_DEAD_LETTERS)]
        out.extend(Grant(who, ResourceType.TOPIC, name, _LITERAL, _WRITE) for name in physical)
    return out


def acl_bindings(prefix: str) -> list[AclBinding]:
    return [binding for grant in grants(prefix) for binding in grant.bindings()]


# ---- the local secure stack ----------------------------------------------------------
def local_secure(settings: Settings) -> bool:
    """The settings point at the local stack, started with ``--secure``."""
    return settings.uses_local_kafka and settings.stack.kafka_secure


def component_settings(settings: Settings, component: str) -> Settings:
    """``settings`` as ``component`` sees Kafka: on the local secure stack (and with no
    credentials configured) SASL_SSL as ``User:<component>``, trusting the local CA;
    otherwise unchanged. ``component`` is a name of :data:`COMPONENTS` or ``admin``."""
    if not local_secure(settings) or settings.kafka.sasl_username:
        return settings
    return _as_component(settings, component)


def _as_component(settings: Settings, component: str) -> Settings:
    stack_secrets = StackSecrets(settings.state_dir)
    if not stack_secrets.exists():
        raise ConfigError(
            "OMNIQUANT_STACK__KAFKA_SECURE is set but "
            f"{stack_secrets.directory} has no CA or credentials: run `omniquant up --secure`"
        )
    return _with_identity(settings, stack_secrets, component)


def _with_identity(settings: Settings, secrets_: Credentials, component: str) -> Settings:
    """``settings`` as ``component`` on a cluster secured with ``secrets_``."""
    if component not in COMPONENTS and component not in SUPER_USERS:
        raise ConfigError(f"no Kafka principal for {component!r}; known: {', '.join(COMPONENTS)}")
    kafka = settings.kafka.model_copy(
        update={
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": MECHANISM,
            "sasl_username": component,
            "sasl_password": SecretStr(secrets_.password(component)),
            "ssl_ca_location": secrets_.ca_path,
            "client_id": f"omniquant-{component}",
        }
    )
    return settings.model_copy(update={"kafka": kafka})


def ensure_access(settings: Settings, timeout: float = 30.0) -> tuple[int, int]:
    """On the local secure stack: every component's SCRAM user (those missing) and the ACLs
    of ``settings.topic_prefix``'s namespace (creating an existing ACL is a no-op).
    Returns (users created, ACL bindings). Does nothing elsewhere: (0, 0)."""
    if not local_secure(settings):
        return (0, 0)
    return apply_access(_as_component(settings, ADMIN), StackSecrets(settings.state_dir), timeout)


def apply_access(
    admin_settings: Settings, secrets_: Credentials, timeout: float = 30.0
) -> tuple[int, int]:
    """As the operator (``admin_settings``: a super user's credentials): every component's
    SCRAM user with its password in ``secrets_`` (those missing) and the ACLs of
    ``admin_settings.topic_prefix``'s namespace; waits until they are in effect. Returns
    (users created, ACL bindings). The local stack's :func:`ensure_access`, and
    `omniquant secure apply` on a deployment (compose, k8s)."""
    admin = AdminClient(dict(admin_settings.kafka_client_config()))
    created = _ensure_users(admin, secrets_, COMPONENTS, timeout)
    bindings = acl_bindings(admin_settings.topic_prefix)
    _wait_all(admin.create_acls(bindings, request_timeout=timeout), "create ACLs", timeout)
    _wait_effective(admin_settings, secrets_, admin, timeout)
    return (created, len(bindings))


def _wait_effective(
    settings: Settings, secrets_: Credentials, admin: AdminClient, timeout: float
) -> None:
    """Until each principal sees the existing topics it was granted: brokers apply new ACLs
    from the metadata log a moment after they are created, and a component started in that
    moment would find its topics "missing"."""
    existing = set(admin.list_topics(timeout=timeout).topics)
    wanted: dict[str, set[str]] = {}
    for grant in grants(settings.topic_prefix):
        literal = grant.resource == ResourceType.TOPIC and grant.pattern == _LITERAL
        if literal and grant.name in existing:
            wanted.setdefault(grant.principal, set()).add(grant.name)
    deadline = time.monotonic() + timeout
    for principal, topics in wanted.items():
        as_principal = _with_identity(settings, secrets_, principal)
        client = AdminClient(dict(as_principal.kafka_client_config()))
        while not topics <= set(client.list_topics(timeout=timeout).topics):
            if time.monotonic() > deadline:
                raise StackError(f"the ACLs of {principal!r} did not take effect in {timeout} s")
            time.sleep(0.1)


def _ensure_users(
    admin: AdminClient, stack_secrets: Credentials, users: Iterable[str], timeout: float
) -> int:
    users = list(users)
    existing: set[str] = set()
    try:
        described = admin.describe_user_scram_credentials(request_timeout=timeout)
        existing = set(described.result(timeout).keys())
    except KafkaException as exc:
        raise StackError(f"cannot list the SCRAM users: {exc.args[0]}") from None
    missing = [u for u in users if u not in existing]
    if not missing:
        return 0
    passwords = stack_secrets.passwords(missing)
    info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192)
    upserts = [UserScramCredentialUpsertion(u, info, passwords[u].encode()) for u in missing]
    _wait_all(
        admin.alter_user_scram_credentials(upserts, request_timeout=timeout),
        "create SCRAM users",
        timeout,
    )
    return len(missing)


def _wait_all(futures: dict[object, object], what: str, timeout: float) -> None:
    for key, future in futures.items():
        try:
            future.result(timeout)  # type: ignore[attr-defined]
        except KafkaException as exc:
            raise StackError(f"could not {what} ({key}): {exc.args[0]}") from None
