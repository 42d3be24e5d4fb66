"""The stage registry is the one place a stage is declared: CLI, supervisor, catalog, README."""

from __future__ import annotations

import inspect
import socket
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from core import metrics
from core.config import load_settings
from core.topics import TopicCatalog
from omniquant import cli
from omniquant.stages import (
    README_BEGIN,
    README_END,
    STAGES,
    LiveFigure,
    StageSpec,
    dead_letter_apps,
    render_readme,
    stage,
    stage_table_markdown,
    topic_catalog,
)
from omniquant.supervisor import Stage, pipeline_stages, scrape

README = Path(__file__).resolve().parents[1] / "README.md"


def _settings(tmp_path: Path):
    return load_settings(topic_prefix="reg.", state_dir=tmp_path)


def test_readme_stage_table_is_the_registry() -> None:
    text = README.read_text()
    assert README_BEGIN in text and README_END in text
    assert render_readme(text) == text, "README stage table is stale: run `make docs`"
    for spec in STAGES:
        assert f"`omniquant stage {spec.name}`" in stage_table_markdown()


def test_every_entry_point_resolves_to_a_function_taking_settings_and_its_name() -> None:
    for spec in STAGES:
        target = spec.load()
        params = inspect.signature(target).parameters
        assert "settings" in params and "name" in params, spec.entry_point
        for option in spec.options:
            assert option.name in params, f"{spec.name}: option {option.name} not accepted"


def test_cli_stage_commands_are_exactly_the_registered_stages() -> None:
    group = typer.main.get_group(cli.app)
    stage_group = group.commands["stage"]
    assert isinstance(stage_group, typer.core.TyperGroup)
    assert sorted(stage_group.commands) == sorted(s.name for s in STAGES)
    feed = stage_group.commands["feed"]
    flags = {opt for p in feed.params for opt in p.opts}
    assert {o.flag for o in stage("feed").options} <= flags


def test_unknown_stage_is_refused_by_name() -> None:
    with pytest.raises(KeyError, match="no stage 'signalz'"):
        stage("signalz")
    result = CliRunner().invoke(cli.app, ["stage", "signalz"])
    assert result.exit_code != 0


def test_supervisor_stages_come_from_the_registry(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    stages = pipeline_stages(settings, options={"feed": {"symbols": ["SPY"], "ticks": 5}})
    assert [s.name for s in stages] == [s.name for s in STAGES]
    by_name = {s.name: s for s in stages}
    assert by_name["feed"].args == [
        "feed",
        "--symbols",
        "SPY",
        "--rate",
        "50.0",
        "--ticks",
        "5",
        "--seed",
        "7",
    ]
    assert by_name["feed"].consumer_group is None and by_name["feed"].is_source
    assert by_name["signals"].consumer_group == "reg.signals"
    assert by_name["execution"].inputs == [
        "reg.orders.approved",
        "reg.market.trades",
        "reg.market.quotes",
        "reg.control",
    ]
    # the sink owns the lag of every record topic
    assert set(by_name["sink-clickhouse"].inputs) == {
        f"reg.{t.logical_name}" for t in topic_catalog().record_topics()
    }


def test_adding_a_stage_is_one_registry_entry(tmp_path: Path) -> None:
    extra = StageSpec(
        name="portfolio-x",
        entry_point="streams.signals:run",
        summary="a new stage",
        inputs=("fills",),
        outputs=("positions",),
        dead_letter="portfolio-x",
    )
    stages = (*STAGES, extra)
    catalog = TopicCatalog.with_dead_letters(dead_letter_apps(stages))
    assert "dlq.portfolio-x" in {t.logical_name for t in catalog.specs}
    assert "dlq.portfolio-x" not in {t.logical_name for t in topic_catalog().specs}
    supervised = pipeline_stages(_settings(tmp_path), stages=stages)
    assert supervised[-1].consumer_group == "reg.portfolio-x"
    assert supervised[-1].inputs == ["reg.fills"]
    assert "| portfolio-x | `omniquant stage portfolio-x` | `fills` |" in stage_table_markdown(
        stages
    )
    assert callable(cli._stage_command(extra))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_live_figures_read_typed_metrics_from_a_real_scrape(tmp_path: Path) -> None:
    port = _free_port()
    metrics.serve_metrics(port)
    supervised = {s.name: s for s in pipeline_stages(_settings(tmp_path))}
    gate = supervised["risk-gate"]
    gate.samples = scrape(port)
    approved0, rejected0 = gate.figure("approved"), gate.figure("rejected")
    metrics.RISK_DECISIONS.labels("APPROVED").inc(3)
    metrics.RISK_DECISIONS.labels("REJECTED").inc(2)
    gate.samples = scrape(port)
    assert gate.figure("approved") == approved0 + 3
    assert gate.figure("rejected") == rejected0 + 2
    assert "approved" in gate.detail() and "rejected" in gate.detail()
    with pytest.raises(KeyError):
        gate.figure("fills")


def test_a_figure_sums_only_the_samples_with_its_labels() -> None:
    figure = LiveFigure("approved", metrics.RISK_DECISIONS, (("decision", "APPROVED"),))
    assert figure.sample_name == "omniquant_risk_decisions_total"
    samples = {
        ("omniquant_risk_decisions_total", (("decision", "APPROVED"),)): 4.0,
        ("omniquant_risk_decisions_total", (("decision", "REJECTED"),)): 9.0,
        ("omniquant_fills_total", (("venue", "PAPER"),)): 100.0,
    }
    assert figure.read(samples) == 4.0
    # a gauge has no _total suffix
    assert LiveFigure("equity", metrics.PORTFOLIO_EQUITY).sample_name == "trading_portfolio_equity"


def test_source_produced_count_is_the_exact_override_when_set(tmp_path: Path) -> None:
    feed: Stage = pipeline_stages(_settings(tmp_path))[0]
    feed.samples = {("omniquant_messages_out_total", (("app", "feed"),)): 7.0}
    assert feed.produced == 7.0 and feed.figure("trades") == 7.0
    feed.produced_override = 9
    assert feed.produced == 9 and feed.figure("trades") == 9


def test_account_figures_break_labelled_metrics_down_by_account(tmp_path: Path) -> None:
    from omniquant.supervisor import account_figures

    supervised = {s.name: s for s in pipeline_stages(_settings(tmp_path))}
    portfolio = supervised["portfolio"]
    portfolio.samples = {
        ("trading_portfolio_equity", (("account", "paper"),)): 1_000_100.5,
        ("trading_portfolio_equity", (("account", "desk-2"),)): 250_000.0,
        ("omniquant_fills_total", (("venue", "PAPER"),)): 3.0,
    }
    assert account_figures(list(supervised.values())) == {
        "paper": {"equity": 1_000_100.5},
        "desk-2": {"equity": 250_000.0},
    }
