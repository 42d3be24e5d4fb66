"""The Prometheus alert rules (docker/prometheus/rules/) are valid, unit-tested and name only
metrics that exist.

promtool (Debian's ``prometheus`` package, installed by scripts/ensure-system-deps.sh) checks
the rules and the server config and runs the unit tests in tests/promtool/. Without it these
tests skip locally and fail under CI (``CI`` set), so CI cannot pass them by skipping.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

import core.metrics

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_CONFIG = ROOT / "docker" / "prometheus" / "prometheus.yml"
RULE_FILES = sorted((ROOT / "docker" / "prometheus" / "rules").glob("*.yml"))
UNIT_TESTS = sorted((ROOT / "tests" / "promtool").glob("*.yml"))

#: Series Prometheus makes itself for every scrape target.
SCRAPE_SERIES = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})
#: Exposed sample names per metric type (prometheus_client's text format).
_SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
}
_PROMQL_WORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring"}
    | {"group_left", "group_right", "inf", "nan"}
)


# ---- promtool ------------------------------------------------------------------------
def _ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        message = "promtool not found: install Debian's prometheus package (make deps)"
        if _ci():
            pytest.fail(f"{message}; CI must run the alert rule tests")
        pytest.skip(message)
    return found


def _promtool(promtool: str, *args: str | Path) -> str:
    done = subprocess.run(
        [promtool, *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    output = f"$ promtool {' '.join(map(str, args))}\n{done.stdout}{done.stderr}"
    assert done.returncode == 0, output
    return output


def test_the_rule_files_pass_promtool_check_rules(promtool: str) -> None:
    assert RULE_FILES, "no rule files under docker/prometheus/rules"
    _promtool(promtool, "check", "rules", *RULE_FILES)


def test_every_promtool_unit_test_passes(promtool: str) -> None:
    assert UNIT_TESTS, "no promtool unit tests under tests/promtool"
    output = _promtool(promtool, "test", "rules", *UNIT_TESTS)
    assert output.count("SUCCESS") == len(UNIT_TESTS), output


def test_the_prometheus_config_is_valid_and_loads_every_rule_file(promtool: str) -> None:
    output = _promtool(promtool, "check", "config", PROMETHEUS_CONFIG)
    for path in RULE_FILES:
        assert str(path.relative_to(PROMETHEUS_CONFIG.parent)) in output, output


# ---- the rules themselves ------------------------------------------------------------
def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _rules(paths: list[Path]) -> Iterator[dict[str, Any]]:
    for path in paths:
        for group in _load(path)["groups"]:
            yield from group["rules"]


def _alerts(paths: list[Path]) -> set[str]:
    return {rule["alert"] for rule in _rules(paths) if "alert" in rule}


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects: label matchers, grouping labels, durations,
    strings, functions and keywords left out."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges and subqueries
    expr = re.sub(
        r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr
    )  # label lists
    names = set()
    for match in re.finditer(r"(?<![\w:.])[a-zA-Z_:][\w:]*", expr):
        name = match.group(0)
        if name.lower() in _PROMQL_WORDS or re.match(r"\s*\(", expr[match.end() :]):
            continue  # a keyword or a function call
        names.add(name)
    return names


def exported_names() -> set[str]:
    """Every sample name core.metrics exposes on /metrics."""
    names: set[str] = set()
    for value in vars(core.metrics).values():
        if isinstance(value, MetricWrapperBase):
            for family in value.describe():
                names.update(family.name + suffix for suffix in _SUFFIXES[family.type])
    return names


def unknown_metrics(expr: str, known: set[str]) -> set[str]:
    return metric_names(expr) - known - SCRAPE_SERIES


def test_metric_names_are_read_from_an_expression() -> None:
    expr = (
        'sum by (app) (increase(omniquant_dead_letters_total{app="x"}[5m])) > 0 '
        "or x_total unless x_total offset 5m and on() up == 0 "
        "and -max by (account) (trading_daily_pnl) / trading_daily_loss_limit >= 0.8"
    )
    assert metric_names(expr) == {
        "omniquant_dead_letters_total",
        "x_total",
        "up",
        "trading_daily_pnl",
        "trading_daily_loss_limit",
    }


def test_a_metric_core_metrics_does_not_define_is_reported() -> None:
    known = exported_names()
    assert unknown_metrics("omniquant_dead_letters_total > 0", known) == set()
    assert unknown_metrics("omniquant_dead_letter_total > 0", known) == {
        "omniquant_dead_letter_total"
    }
    # a counter is exposed with _total only
    assert unknown_metrics("omniquant_fills > 0", known) == {"omniquant_fills"}


def test_every_metric_the_rules_use_is_defined_in_core_metrics() -> None:
    known = exported_names()
    unknown = {
        rule.get("alert") or rule.get("record"): sorted(unknown_metrics(rule["expr"], known))
        for rule in _rules(RULE_FILES)
    }
    assert {name: names for name, names in unknown.items() if names} == {}


def test_every_alert_has_a_severity_a_summary_and_a_description() -> None:
    for rule in _rules(RULE_FILES):
        if "alert" not in rule:
            continue
        assert rule.get("labels", {}).get("severity") in ("warning", "critical"), rule["alert"]
        annotations = rule.get("annotations", {})
        assert {"summary", "description"} <= set(annotations), rule["alert"]


def _rule_files_of(test_file: Path) -> list[Path]:
    paths: list[Path] = []
    for pattern in _load(test_file)["rule_files"]:
        paths.extend(sorted(test_file.parent.glob(pattern)))
    return [path.resolve() for path in paths]


def test_every_alert_has_a_unit_test_where_it_fires_and_one_where_it_does_not() -> None:
    fires: set[str] = set()
    stays_quiet: set[str] = set()
    for test_file in UNIT_TESTS:
        loaded = _rule_files_of(test_file)
        assert loaded, f"{test_file.name} loads no rule file"
        assert set(loaded) <= {path.resolve() for path in RULE_FILES}, test_file.name
        known = _alerts(loaded)
        for case in _load(test_file)["tests"]:
            assert case.get("input_series"), f"{test_file.name}: {case.get('name')} has no series"
            for check in case.get("alert_rule_test", []):
                # promtool passes an empty expectation for an alert no rule defines
                assert check["alertname"] in known, f"{test_file.name}: {check['alertname']}"
                (fires if check.get("exp_alerts") else stays_quiet).add(check["alertname"])
    alerts = _alerts(RULE_FILES)
    assert alerts, "no alerts defined"
    assert sorted(alerts - fires) == [], "alerts never tested firing"
    assert sorted(alerts - stays_quiet) == [], "alerts never tested not firing"
