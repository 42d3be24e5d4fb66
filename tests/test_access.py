"""The secure mode's ACLs as the stage registry implies them, and the stack shape kept for
the other commands (no broker: the integration side is tests/test_secure_stack.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from confluent_kafka.admin import AclOperation, ResourcePatternType, ResourceType

from core.config import load_settings
from core.errors import ConfigError
from core.topics import TopicNames
from omniquant.access import COMPONENTS, Grant, component_settings, grants
from omniquant.stack.secure import StackSecrets
from omniquant.stack.shape import save_shape, with_saved_shape
from omniquant.stages import STAGES

P = "ns."


def _writers() -> dict[str, set[str]]:
    """topic → principals allowed to write it (literal grants)."""
    out: dict[str, set[str]] = {}
    for grant in grants(P):
        if grant.resource == ResourceType.TOPIC and AclOperation.WRITE in grant.operations:
            assert grant.pattern == ResourcePatternType.LITERAL, grant
            out.setdefault(grant.name, set()).add(grant.principal)
    return out


def test_only_the_risk_gate_writes_approved_orders_and_only_execution_fills() -> None:
    writers = _writers()
    assert writers[f"{P}orders.approved"] == {"risk-gate"}
    assert writers[f"{P}fills"] == {"execution"}
    assert writers[f"{P}orders.requests"] == {"signals"}
    assert writers[f"{P}control"] == {"risk-metrics"}  # and the operator (a super user)


def test_the_feeds_write_market_topics_and_their_dead_letters_only() -> None:
    for who in ("feed", "replay"):
        written = {t for t, principals in _writers().items() if who in principals}
        assert written, who
        assert all(t.startswith(f"{P}market.") or t == f"{P}dlq.feeds" for t in written), (
            who,
            written,
        )


def test_every_stage_may_write_exactly_its_outputs_and_dead_letters() -> None:
    writers = _writers()
    for spec in STAGES:
        expected = {f"{P}{t}" for t in spec.outputs}
        if spec.dead_letter:
            expected.add(f"{P}dlq.{spec.dead_letter}")
        assert {t for t, who in writers.items() if spec.name in who} == expected, spec.name


def test_a_consuming_stage_reads_its_inputs_with_its_own_group_and_no_other() -> None:
    by_principal: dict[str, list[Grant]] = {}
    for grant in grants(P):
        by_principal.setdefault(grant.principal, []).append(grant)
    for spec in STAGES:
        group = spec.consumer_group(P)
        if group is None or spec.name == "lag-monitor":
            continue
        mine = by_principal[spec.name]
        groups = [g.name for g in mine if g.resource == ResourceType.GROUP]
        assert groups[0] == group and all(g.startswith(P) for g in groups), (spec.name, groups)
        read = {
            g.name
            for g in mine
            if AclOperation.READ in g.operations and g.resource == ResourceType.TOPIC
        }
        for topic in spec.input_topics(TopicNames(P)):
            assert topic in read, (spec.name, topic)
        # transactional ids and Quix's internal topics only under its own group's name
        for g in mine:
            if g.resource == ResourceType.TRANSACTIONAL_ID:
                assert g.name == group and g.pattern == ResourcePatternType.PREFIXED
            if g.name.startswith(("changelog__", "repartition__")):
                assert g.name.endswith(f"__{group}--")


def test_components_settings_take_their_own_identity_on_the_secure_local_stack(
    tmp_path: Path,
) -> None:
    settings = load_settings(state_dir=tmp_path, stack={"kafka_secure": True})
    with pytest.raises(ConfigError, match="omniquant up --secure"):
        component_settings(settings, "signals")  # no CA or credentials yet
    StackSecrets(tmp_path).ensure()
    signals = component_settings(settings, "signals").kafka
    gate = component_settings(settings, "risk-gate").kafka
    assert (signals.sasl_username, gate.sasl_username) == ("signals", "risk-gate")
    assert signals.security_protocol == "SASL_SSL" and signals.sasl_mechanism == "SCRAM-SHA-512"
    assert signals.sasl_password is not None and gate.sasl_password is not None
    assert signals.sasl_password.get_secret_value() != gate.sasl_password.get_secret_value()
    assert "**" in repr(signals) and signals.sasl_password.get_secret_value() not in repr(signals)
    assert set(COMPONENTS) >= {s.name for s in STAGES} | {"replay"}
    # an explicit identity wins; an external cluster is left alone
    own = load_settings(
        state_dir=tmp_path,
        stack={"kafka_secure": True},
        kafka={"sasl_username": "me", "sasl_password": "pw", "security_protocol": "SASL_SSL",
               "sasl_mechanism": "SCRAM-SHA-512"},
    )  # fmt: skip
    assert component_settings(own, "signals").kafka.sasl_username == "me"
    external = load_settings(kafka={"bootstrap_servers": "h:9092"}, stack={"kafka_secure": True})
    assert component_settings(external, "signals").kafka.sasl_username is None


def test_the_stack_shape_is_kept_for_the_other_commands_unless_the_env_sets_it(
    tmp_path: Path,
) -> None:
    save_shape(load_settings(state_dir=tmp_path, stack={"kafka_brokers": 3, "kafka_secure": True}))
    later = with_saved_shape(load_settings(state_dir=tmp_path))
    assert (later.stack.kafka_brokers, later.stack.kafka_secure) == (3, True)
    assert len(later.local_kafka_ports()) == 3
    explicit = with_saved_shape(load_settings(state_dir=tmp_path, stack={"kafka_brokers": 1}))
    assert (explicit.stack.kafka_brokers, explicit.stack.kafka_secure) == (1, True)
    other = with_saved_shape(load_settings(state_dir=tmp_path / "other"))
    assert (other.stack.kafka_brokers, other.stack.kafka_secure) == (1, False)
