"""Soak: the whole supervised pipeline at a fixed feed rate for a bounded time; lag, RSS.

Setup. A real broker (Kafka 4, KRaft) and Redis from the harness (``KAFKA_BOOTSTRAP_SERVERS``
and ``REDIS_URL`` if set, else a LocalKafka and a LocalRedis on free ports, stopped at the
end), a fresh topic namespace with the catalog's topics, chDB in a temporary state
directory. Every registered stage runs as its own process under ``omniquant run``'s
:class:`Supervisor` (this process is the supervisor, so it can watch the stages' pids): the
synthetic feed at ``--rate`` trades/s over ``--symbols`` symbols (the same feed
``omniquant run --rate`` starts), then bars, signals, risk gate, execution, portfolio, risk
metrics, the ClickHouse sink and the lag monitor, with their default settings. After
``--duration`` seconds the supervisor stops the feed and lets each consumer drain (at most
``--drain`` s), as ``omniquant run --duration`` does.

Every ``--interval`` seconds one row: elapsed time, trades on the topic so far and the rate
over the last interval, each consumer stage's group lag (records; core.kafka.LagProbe, as the
live view shows it), each stage's RSS (VmRSS of its process and its children, from /proc)
and the total; each stage's CPU seconds (utime + stime from /proc). At the end a verdict,
over the samples of the feed's running time:

* lag: the least-squares slope of the total lag over the second half (records/s) and the
  growth it amounts to over that half; "flat" when that growth is below
  max(1,000 records, 0.5 s of the target rate), else "growing";
* RSS: per stage and total, the mean of the second half against the first half; "flat" when
  the total grew by less than 10 %, else "growing";
* CPU: the cores each stage kept busy and its CPU microseconds per trade fed, how busy
  the whole machine was (/proc/stat) and the cores the rest took (the broker, Redis, this
  supervisor and the kernel: the machine's busy time less the stages'): where the cores
  go when the lag grows;
* rate: the achieved feed rate (trades added to the topic between the first and the last
  sample, per second) against the target, as a ratio; below 0.95 the output says the
  pipeline's feed did not sustain the target here.

This is a benchmark, not a test: it prints figures and a verdict and exits 0 unless the run
itself failed (a stage died: exit 1). Two cores are shared by the broker, Redis and nine
Python processes: figures are those of a crowded machine, and the load average is printed.

Run: .venv/bin/python benchmarks/soak.py [--rate 5000] [--duration 600] [--interval 10]
     [--symbols 8] [--drain 120] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import broker, redis_server

from core.config import load_settings
from core.kafka import end_offsets, ensure_topics
from core.topics import TopicNames
from omniquant.stages import topic_catalog
from omniquant.supervisor import Stage, Supervisor, pipeline_stages

SYMBOLS = ("AAPL", "MSFT", "NVDA", "SPY", "AMZN", "GOOG", "META", "TSLA", "IBM", "BAC")
RSS_GROWING = 0.10  # second-half mean over first-half mean, total of the stages
RATE_SUSTAINED = 0.95


def say(message: str) -> None:
    print(message, flush=True)


def _children(pid: int) -> list[int]:
    try:
        found = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    out = [int(c) for c in found]
    for child in list(out):
        out.extend(_children(child))
    return out


def rss_mb(pid: int) -> float:
    """VmRSS of ``pid`` and its descendants, in MB (0 once gone)."""
    total = 0
    for p in (pid, *_children(pid)):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
                    break
        except OSError:
            continue
    return total / 1024


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its descendants so far (0 once gone)."""
    total = 0
    for p in (pid, *_children(pid)):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / _TICK


def machine_busy_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    return (sum(values) - idle) / _TICK, sum(values) / _TICK


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs (0 with fewer than two points)."""
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    if var == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


@dataclass
class Sample:
    elapsed: float
    trades: int
    rate: float
    lag: dict[str, int | None]
    rss: dict[str, float]
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds so far, per stage
    machine: tuple[float, float] = (0.0, 0.0)  # (busy, total) CPU seconds of the machine


@dataclass
class Soak:
    stages: list[Stage]
    trades_topic: str
    settings: Any
    interval: float
    duration: float
    samples: list[Sample] = field(default_factory=list)
    start_trades: int = 0
    _next: float = 0.0
    _last: tuple[float, int] | None = None

    def trades(self) -> int:
        try:
            return sum(end_offsets(self.settings, self.trades_topic, timeout=2.0).values())
        except Exception:
            return self._last[1] + self.start_trades if self._last else self.start_trades

    def header(self) -> None:
        consumers = [s.name for s in self.stages if s.consumer_group]
        cols = ["elapsed", "trades", "rate/s"]
        cols += [f"lag:{n}" for n in consumers]
        cols += [f"MB:{s.name}" for s in self.stages] + ["MB:total"]
        say("  ".join(f"{c:>10}" for c in cols))

    def on_tick(self, sup: Supervisor) -> None:
        now = time.monotonic()
        if sup.started_at == 0.0 or now < self._next:
            return
        elapsed = now - sup.started_at
        if elapsed > self.duration + 0.5:
            return  # draining: the verdict is over the feed's running time
        self._next = now + self.interval
        trades = self.trades() - self.start_trades
        if self._last is None:
            rate = trades / max(elapsed, 1e-9)
        else:
            rate = (trades - self._last[1]) / max(elapsed - self._last[0], 1e-9)
        self._last = (elapsed, trades)
        lag = {s.name: s.lag for s in self.stages if s.consumer_group}
        rss = {
            s.name: rss_mb(s.process.pid)
            for s in self.stages
            if s.process is not None and s.process.poll() is None
        }
        cpu = {
            s.name: cpu_s(s.process.pid)
            for s in self.stages
            if s.process is not None and s.process.poll() is None
        }
        self.samples.append(Sample(elapsed, trades, rate, lag, rss, cpu, machine_busy_s()))
        cells = [f"{elapsed:10.0f}", f"{trades:10,}", f"{rate:10,.0f}"]
        cells += ["         -" if v is None else f"{v:10,}" for v in lag.values()]
        cells += [f"{rss.get(s.name, 0.0):10.0f}" for s in self.stages]
        cells += [f"{sum(rss.values()):10.0f}"]
        say("  ".join(cells))


def verdict(soak: Soak, target: float, running_s: float, total_trades: int) -> dict[str, Any]:
    samples = [s for s in soak.samples if s.elapsed > 0]
    half = len(samples) // 2
    first, second = samples[:half], samples[half:]
    xs = [s.elapsed for s in second]
    lag_total = [float(sum(v or 0 for v in s.lag.values())) for s in second]
    lag_slope = slope(xs, lag_total)
    span = (xs[-1] - xs[0]) if len(xs) > 1 else 0.0
    lag_growth = lag_slope * span
    lag_limit = max(1_000.0, 0.5 * target)
    per_stage_lag = {
        name: slope(xs, [float(s.lag.get(name) or 0) for s in second])
        for name in (second[0].lag if second else {})
    }
    names = [s.name for s in soak.stages]
    rss_first = {n: mean([s.rss.get(n, 0.0) for s in first]) for n in names}
    rss_second = {n: mean([s.rss.get(n, 0.0) for s in second]) for n in names}
    total_first = mean([sum(s.rss.values()) for s in first])
    total_second = mean([sum(s.rss.values()) for s in second])
    rss_growth = total_second / total_first - 1 if total_first else float("nan")
    # between the first and the last sample: the feed's steady rate (the first sample's
    # count also holds what the feed sent while the other stages were still starting)
    dt = samples[-1].elapsed - samples[0].elapsed
    achieved = (samples[-1].trades - samples[0].trades) / dt if dt > 0 else 0.0
    # CPU between the first and last sample: cores each stage kept busy, and per trade
    fed = samples[-1].trades - samples[0].trades
    cpu_cores = {
        name: (samples[-1].cpu.get(name, 0.0) - samples[0].cpu.get(name, 0.0)) / dt
        for name in samples[-1].cpu
    } if dt > 0 else {}  # fmt: skip
    busy = samples[-1].machine[0] - samples[0].machine[0]
    total = samples[-1].machine[1] - samples[0].machine[1]
    return {
        "cpu_cores_per_stage": cpu_cores,
        "cpu_us_per_trade": {n: c * dt / fed * 1e6 for n, c in cpu_cores.items()} if fed else {},
        "machine_busy": busy / total if total else float("nan"),
        # everything that is not a stage: the broker, Redis, this supervisor, the kernel
        "other_cores": busy / dt - sum(cpu_cores.values()) if dt > 0 else float("nan"),
        "samples": len(samples),
        "lag_slope_per_s": lag_slope,
        "lag_growth_second_half": lag_growth,
        "lag_last": lag_total[-1] if lag_total else None,
        "lag_max": max((sum(v or 0 for v in s.lag.values()) for s in samples), default=None),
        "lag": "flat" if lag_growth < lag_limit else "growing",
        "lag_slope_per_stage": per_stage_lag,
        "rss_first_half_mb": rss_first,
        "rss_second_half_mb": rss_second,
        "rss_total_first_mb": total_first,
        "rss_total_second_mb": total_second,
        "rss_growth": rss_growth,
        "rss": "flat" if rss_growth < RSS_GROWING else "growing",
        "target_rate": target,
        "achieved_rate": achieved,
        "rate_ratio": achieved / target,
        "trades": total_trades,
        "overall_rate": total_trades / running_s if running_s else 0.0,
        "running_s": running_s,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=5000.0, help="feed trades per second")
    parser.add_argument("--duration", type=float, default=600.0, help="feed seconds")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between rows")
    parser.add_argument("--symbols", type=int, default=8, help=f"1..{len(SYMBOLS)}")
    parser.add_argument("--drain", type=float, default=120.0, help="max drain seconds")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="also print the verdict as JSON")
    args = parser.parse_args()
    symbols = list(SYMBOLS[: max(1, min(args.symbols, len(SYMBOLS)))])

    with (
        broker("soak") as bootstrap,
        redis_server("soak") as redis_url,
        tempfile.TemporaryDirectory(prefix="bench-soak-state-") as state,
    ):
        settings = load_settings(
            kafka={"bootstrap_servers": bootstrap},
            redis={"url": redis_url},
            topic_prefix=f"bench-soak-{uuid.uuid4().hex[:8]}.",
            state_dir=Path(state),
            clickhouse={"chdb_path": Path(state) / "clickhouse"},
        )
        ensure_topics(settings, topic_catalog())
        feed = {"symbols": symbols, "rate": args.rate, "seed": args.seed}
        stages = pipeline_stages(settings, options={"feed": feed})
        trades_topic = TopicNames(settings.topic_prefix).trades
        soak = Soak(stages, trades_topic, settings, args.interval, args.duration)
        soak.start_trades = soak.trades()
        sup = Supervisor(
            settings,
            stages,
            duration=args.duration,
            log_dir=Path(state) / "logs",
            drain_timeout=args.drain,
            on_tick=soak.on_tick,
        )
        say(
            f"soak: {len(stages)} stages, feed {args.rate:,.0f} trades/s over "
            f"{len(symbols)} symbols for {args.duration:.0f} s, a row every "
            f"{args.interval:.0f} s; load average {os.getloadavg()[0]:.2f}, "
            f"{os.cpu_count()} CPUs"
        )
        soak.header()
        wall = time.monotonic()
        code = sup.run()
        # counted on the topic: the supervisor's figure for a source is what every source
        # added (the lag monitor's records too)
        total = soak.trades() - soak.start_trades
        running = min(args.duration, max(time.monotonic() - sup.started_at, 1e-9))
        say(
            f"\nrun: {sup.outcome} (exit {code}) after {time.monotonic() - wall:.0f} s "
            f"wall (stages start, {args.duration:.0f} s of feed, drain); load average "
            f"{os.getloadavg()[0]:.2f}"
        )
        for stage in stages:
            say(
                f"  {stage.name:<16} consumed {stage.consumed:>12,.0f}  "
                f"produced {stage.produced:>12,.0f}"
            )
        if len(soak.samples) < 4:
            say("too few samples for a verdict: run longer or sample more often")
            return 1 if code else 0
        v = verdict(soak, args.rate, running, total)
        say(f"\nverdict over {v['samples']} samples ({running:.0f} s of feed):")
        say(
            f"  lag: {v['lag']}: slope {v['lag_slope_per_s']:+,.1f} records/s over the "
            f"second half ({v['lag_growth_second_half']:+,.0f} records), last "
            f"{v['lag_last']:,.0f}, max {v['lag_max']:,}"
        )
        for name, s in v["lag_slope_per_stage"].items():
            say(f"      {name:<16} {s:+,.1f} records/s")
        say(
            f"  RSS: {v['rss']}: total {v['rss_total_first_mb']:,.0f} MB (first half "
            f"mean) → {v['rss_total_second_mb']:,.0f} MB (second half), "
            f"{v['rss_growth']:+.1%}"
        )
        for name in v["rss_first_half_mb"]:
            a, b = v["rss_first_half_mb"][name], v["rss_second_half_mb"][name]
            growth = f"{b / a - 1:+.1%}" if a else "n/a"
            say(f"      {name:<16} {a:7.0f} → {b:7.0f} MB  {growth}")
        say(
            f"  CPU: the machine {v['machine_busy']:.0%} busy ({os.cpu_count()} CPUs); "
            f"the stages {sum(v['cpu_cores_per_stage'].values()):.2f} cores in all:"
        )
        for name, cores in sorted(v["cpu_cores_per_stage"].items(), key=lambda kv: -kv[1]):
            per = v["cpu_us_per_trade"].get(name, float("nan"))
            say(f"      {name:<16} {cores:5.2f} cores  {per:8,.0f} µs per trade fed")
        say(
            f"      {'everything else':<16} {v['other_cores']:5.2f} cores  "
            "(the broker, Redis, this supervisor, the kernel)"
        )
        say(
            f"  rate: achieved {v['achieved_rate']:,.0f} trades/s against a target of "
            f"{args.rate:,.0f}: ratio {v['rate_ratio']:.2f} (between the first and last "
            f"sample; {v['trades']:,} trades in all, {v['overall_rate']:,.0f}/s over the run)"
        )
        if v["rate_ratio"] < RATE_SUSTAINED:
            say(
                f"  NOT SUSTAINED: the pipeline's feed reached {v['achieved_rate']:,.0f} "
                f"trades/s, not {args.rate:,.0f}, on this machine "
                f"({os.cpu_count()} CPUs)"
            )
        if args.json:
            print(json.dumps({"outcome": sup.outcome, "exit": code, **v}, default=str))
        return 1 if code else 0


if __name__ == "__main__":
    sys.exit(main())
