"""The strategy interface, its event-time bars, the runner that feeds it, and the loader.

A strategy is a small class (:class:`Strategy`) with typed parameters (a pydantic model,
:class:`StrategyParams`), explicit JSON-able state (:meth:`Strategy.snapshot` /
:meth:`Strategy.restore`) and two hooks: :meth:`Strategy.on_bar` (every closed bar) and
:meth:`Strategy.on_trade` (every trade, only if :attr:`Strategy.wants_trades`). A hook returns
a :class:`Target` — the position it wants, LONG / SHORT / FLAT of ``params.quantity`` — or
None to keep the one it has. Orders are the difference between target and position
(:func:`streams.logic.orders.signal_to_order`), so a strategy never computes order sizes.

Pure: no I/O, no clock. Prices, sizes and quantities are raw fixed-point ints (1e-9,
:mod:`schemas.fixedpoint`); nothing that decides a target may be a float, so the same trades
give byte-identical signals and orders, live and in a backtest.

Bars (:class:`StrategyRunner`, the same rule as :class:`streams.logic.sma.SmaCrossover`)
    Trades are bucketed by event time into ``[start, start + interval)``, aligned to the
    epoch. The open bar closes when a trade of a *later* bucket arrives (its ``ts_event`` is
    the bar's :attr:`Bar.ts_close`: acting on the bar then never looks ahead). Close: the
    latest trade in event time (a tie goes to the later arrival); open: the earliest (a tie
    goes to the earlier arrival); high/low/volume/count over all of the bucket's trades.
    Buckets without trades produce no bar; a trade of an earlier bucket than the open one is
    late: ignored and counted.

Loading (:func:`load_strategy`)
    By name from the entry-point group ``omniquant.strategies`` (the shipped ones are in
    this project's ``pyproject.toml``; a user's package adds its own the same way), or by a
    dotted path ``package.module:Class``. :func:`configure` validates the parameters:
    unknown or invalid ones raise :class:`StrategyError` naming the parameter.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, ClassVar, Final

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from core.errors import ConfigError
from schemas.fixedpoint import to_fixed
from schemas.models import SignalDirection

__all__ = [
    "ENTRY_POINT_GROUP",
    "Bar",
    "Configured",
    "Emission",
    "RunnerStep",
    "Strategy",
    "StrategyError",
    "StrategyParams",
    "StrategyRunner",
    "Target",
    "available_strategies",
    "configure",
    "div_half_even",
    "load_strategy",
]

ENTRY_POINT_GROUP: Final = "omniquant.strategies"
RUNNER_STATE_VERSION: Final = 1
_NS_PER_MS: Final = 1_000_000
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1


class StrategyError(ConfigError):
    """A strategy cannot be found, loaded or configured; the message names what and why."""


def div_half_even(numerator: int, denominator: int) -> int:
    """``numerator / denominator`` rounded half-even to an int (``denominator > 0``)."""
    quotient, remainder = divmod(numerator, denominator)
    if remainder * 2 > denominator or (remainder * 2 == denominator and quotient % 2 == 1):
        quotient += 1
    return quotient


# -- what a strategy sees and says ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Bar:
    """One closed event-time bar of one symbol. Prices and volume are raw fixed-point."""

    start_ns: int  # bucket start (aligned to the epoch)
    open: int
    high: int
    low: int
    close: int
    volume: int  # Σ size of its trades
    trades: int
    ts_close: int  # event time of the trade (of a later bucket) that closed it


@dataclass(frozen=True, slots=True)
class Target:
    """The position a strategy wants: LONG → +quantity, SHORT → -quantity, FLAT → 0.

    ``values`` are two indicator values (raw, price units) the signal record carries as
    ``fast_value`` / ``slow_value``; each strategy documents which."""

    direction: SignalDirection
    values: tuple[int, int] = (0, 0)


class StrategyParams(BaseModel):
    """Base of every strategy's parameters: frozen, unknown names refused.

    ``quantity`` (decimal text, > 0) is the size of a LONG or SHORT target."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    quantity: Decimal = Field(default=Decimal("100"), gt=0)

    @property
    def quantity_raw(self) -> int:
        return to_fixed(self.quantity)


class Strategy(ABC):
    """A trading strategy for one symbol: bars (and optionally trades) in, targets out.

    Subclasses set :attr:`Params` to their parameter model, take an instance of it in
    ``__init__`` and keep every piece of state that matters in attributes that
    :meth:`snapshot` returns as JSON-able data (ints, strings, None, lists, dicts; Decimals as
    strings) and :meth:`restore` puts back: a restored instance must then behave exactly as
    the one snapshotted.
    """

    Params: ClassVar[type[StrategyParams]] = StrategyParams
    wants_trades: ClassVar[bool] = False  # on_trade is called only when True (hot path)

    def __init__(self, params: StrategyParams) -> None:
        self.params = params

    @abstractmethod
    def on_bar(self, bar: Bar) -> Target | None:
        """A bar closed: the new target, or None to keep the current one."""

    def on_trade(self, price: int, size: int, ts_event: int) -> Target | None:
        """A trade (not late): the new target, or None. Only if :attr:`wants_trades`."""
        return None

    @abstractmethod
    def snapshot(self) -> dict[str, Any]:
        """Every piece of state as JSON-able data."""

    @abstractmethod
    def restore(self, state: Mapping[str, Any]) -> None:
        """Put back what :meth:`snapshot` returned (on an instance made with the same params)."""


# -- loading and configuring ------------------------------------------------------------------


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    found: dict[str, importlib.metadata.EntryPoint] = {}
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        seen = found.get(entry.name)
        if seen is not None and seen.value != entry.value:
            raise StrategyError(
                f"strategy {entry.name!r} is registered twice in {ENTRY_POINT_GROUP!r}: "
                f"{seen.value} and {entry.value}"
            )
        found[entry.name] = entry
    return found


def available_strategies() -> dict[str, str]:
    """Registered strategy names → their ``module:Class`` (entry-point group)."""
    return {name: entry.value for name, entry in sorted(_entry_points().items())}


def load_strategy(name: str) -> type[Strategy]:
    """The strategy class registered as ``name``, or at the dotted path ``module:Class``."""
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            target: Any = importlib.import_module(module_name)
            for part in attr.split("."):
                target = getattr(target, part)
        except (ImportError, AttributeError) as exc:
            raise StrategyError(f"strategy {name!r} cannot be imported: {exc}") from exc
    else:
        entries = _entry_points()
        entry = entries.get(name)
        if entry is None:
            known = ", ".join(sorted(entries)) or "none"
            raise StrategyError(
                f"unknown strategy {name!r} (registered in {ENTRY_POINT_GROUP!r}: {known}; "
                "or give a dotted path package.module:Class)"
            )
        try:
            target = entry.load()
        except (ImportError, AttributeError) as exc:
            raise StrategyError(
                f"strategy {name!r} ({entry.value}) cannot be loaded: {exc}"
            ) from exc
    if not (isinstance(target, type) and issubclass(target, Strategy)):
        raise StrategyError(f"strategy {name!r} is {target!r}, not a Strategy subclass")
    if not (isinstance(target.Params, type) and issubclass(target.Params, StrategyParams)):
        raise StrategyError(f"strategy {name!r}: Params must be a StrategyParams subclass")
    return target


@dataclass(frozen=True, slots=True)
class Configured:
    """A strategy class with validated parameters: makes the per-symbol instances."""

    name: str
    cls: type[Strategy]
    params: StrategyParams

    def new(self) -> Strategy:
        return self.cls(self.params)

    def params_json(self) -> dict[str, Any]:
        return self.params.model_dump(mode="json")


def configure(
    name: str, params: Mapping[str, Any], defaults: Mapping[str, Any] | None = None
) -> Configured:
    """Load ``name`` and validate ``params`` (text values are parsed: ``"10"``, ``"true"``).

    ``defaults`` fill the parameters the strategy has and ``params`` does not give; names it
    does not have are ignored there (they are another strategy's). In ``params`` an unknown
    name is an error."""
    cls = load_strategy(name)
    fields = cls.Params.model_fields
    merged = {k: v for k, v in (defaults or {}).items() if k in fields}
    merged.update(params)
    try:
        validated = cls.Params.model_validate(merged)
    except ValidationError as exc:
        raise StrategyError(_params_message(name, cls, exc)) from None
    return Configured(name=name, cls=cls, params=validated)


def _params_message(name: str, cls: type[Strategy], exc: ValidationError) -> str:
    known = ", ".join(cls.Params.model_fields)
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "(parameters)"
        if error["type"] == "extra_forbidden":
            problems.append(f"unknown parameter {where!r}")
        else:
            problems.append(f"parameter {where!r}: {error['msg']} (got {error.get('input')!r})")
    return f"strategy {name!r}: " + "; ".join(problems) + f" (parameters: {known})"


# -- the runner: trades → bars → the strategy → emissions --------------------------------------


@dataclass(frozen=True, slots=True)
class Emission:
    """A new target: the signal the stage publishes (and the order it implies)."""

    direction: SignalDirection
    target_position: int  # signed raw quantity
    price: int  # the closed bar's close (or the trade's price, for on_trade targets)
    values: tuple[int, int]
    ts_event: int  # the trade that closed the bar (or the trade itself)
    bar_start_ns: int | None  # None for an on_trade target
    sequence: int  # 1 for the symbol's first emission, then 2, 3, ...


@dataclass(frozen=True, slots=True)
class RunnerStep:
    """What one trade did: closed a bar, led to new targets, or was late and ignored."""

    emissions: tuple[Emission, ...] = ()
    bar_closed: bool = False
    late: bool = False


_NOTHING: Final = RunnerStep()
_LATE: Final = RunnerStep(late=True)
_CLOSED: Final = RunnerStep(bar_closed=True)


class StrategyRunner:
    """One symbol's bars and strategy; counts emissions (the signal ids' sequence).

    State in two JSON-able parts changing at different rates, like the SMA machine's:
    :meth:`bar_state` (the open bar and late count: every trade changes it) and
    :meth:`strategy_state` (name, parameters, sequence, direction and the strategy's
    :meth:`Strategy.snapshot`: only a bar close or a target changes it)."""

    __slots__ = (
        "_close",
        "_close_ts",
        "_count",
        "_direction",
        "_high",
        "_interval_ns",
        "_late",
        "_low",
        "_open",
        "_open_ts",
        "_sequence",
        "_start",
        "_volume",
        "_wants_trades",
        "configured",
        "strategy",
    )

    def __init__(self, configured: Configured, bar_interval_ms: int) -> None:
        if bar_interval_ms < 1:
            raise ValueError(f"bar_interval_ms must be >= 1, got {bar_interval_ms}")
        self.configured = configured
        self.strategy = configured.new()
        self._wants_trades = self.strategy.wants_trades
        self._interval_ns = bar_interval_ms * _NS_PER_MS
        self._start: int | None = None
        self._open = self._open_ts = self._high = self._low = 0
        self._close = self._close_ts = self._volume = self._count = 0
        self._late = 0
        self._sequence = 0
        self._direction = SignalDirection.FLAT  # the last target's; FLAT before any

    @property
    def sequence(self) -> int:
        return self._sequence

    @property
    def late_trades(self) -> int:
        return self._late

    @property
    def direction(self) -> SignalDirection:
        """The last target emitted (FLAT before the first)."""
        return self._direction

    def on_trade(self, price: int, size: int, ts_event: int) -> RunnerStep:
        """Feed one trade (raw price and size, event time in ns)."""
        bucket = ts_event - ts_event % self._interval_ns
        start = self._start
        if bucket == start:  # the common case first: one more trade in the open bar
            if ts_event >= self._close_ts:
                self._close = price
                self._close_ts = ts_event
            elif ts_event < self._open_ts:
                self._open = price
                self._open_ts = ts_event
            if price > self._high:
                self._high = price
            elif price < self._low:
                self._low = price
            self._volume += size
            self._count += 1
            if self._wants_trades:
                return self._traded(price, size, ts_event, closed=False)
            return _NOTHING
        if start is None:
            self._open_bar(bucket, price, size, ts_event)
            if self._wants_trades:
                return self._traded(price, size, ts_event, closed=False)
            return _NOTHING
        if bucket < start:
            self._late += 1
            return _LATE
        bar = Bar(
            start,
            self._open,
            self._high,
            self._low,
            self._close,
            self._volume,
            self._count,
            ts_event,
        )
        self._open_bar(bucket, price, size, ts_event)
        target = self.strategy.on_bar(bar)
        emitted = self._emit(target, bar.close, ts_event, start) if target is not None else None
        if self._wants_trades:
            step = self._traded(price, size, ts_event, closed=True)
            if emitted is not None:
                return RunnerStep((emitted, *step.emissions), bar_closed=True)
            return step
        if emitted is None:
            return _CLOSED
        return RunnerStep((emitted,), bar_closed=True)

    def _open_bar(self, bucket: int, price: int, size: int, ts_event: int) -> None:
        self._start = bucket
        self._open = self._high = self._low = self._close = price
        self._open_ts = self._close_ts = ts_event
        self._volume, self._count = size, 1

    def _traded(self, price: int, size: int, ts_event: int, *, closed: bool) -> RunnerStep:
        target = self.strategy.on_trade(price, size, ts_event)
        emitted = self._emit(target, price, ts_event, None) if target is not None else None
        # an on_trade strategy's state may change with any trade: report it as a close
        return RunnerStep(() if emitted is None else (emitted,), bar_closed=True)

    def _emit(
        self, target: Target, price: int, ts_event: int, bar_start: int | None
    ) -> Emission | None:
        if target.direction == self._direction:
            return None  # no change of target: no signal
        self._direction = target.direction
        self._sequence += 1
        quantity = self.configured.params.quantity_raw
        position = (
            quantity
            if target.direction == SignalDirection.LONG
            else -quantity
            if target.direction == SignalDirection.SHORT
            else 0
        )
        return Emission(
            direction=target.direction,
            target_position=position,
            price=price,
            values=target.values,
            ts_event=ts_event,
            bar_start_ns=bar_start,
            sequence=self._sequence,
        )

    # -- state --------------------------------------------------------------------------

    def bar_state(self) -> list[int | str | None]:
        """``[start, open, open_ts, high, low, close, close_ts, volume, count, late]``
        (start None before the first trade). JSON-able; changes with every trade.

        The volume is a sum of sizes, which can leave int64 (the state store's JSON cannot
        hold such an int, and the signals stage stopped at its next commit: found by
        tests/test_fuzz_inputs.py); it is then a decimal string, which :meth:`restore`
        reads back like the BarBuilder's volumes."""
        volume = self._volume
        return [
            self._start,
            self._open,
            self._open_ts,
            self._high,
            self._low,
            self._close,
            self._close_ts,
            volume if _INT64_MIN <= volume <= _INT64_MAX else str(volume),
            self._count,
            self._late,
        ]

    def strategy_state(self) -> dict[str, Any]:
        """Which strategy, its parameters, the sequence, the last target and its snapshot."""
        return {
            "version": RUNNER_STATE_VERSION,
            "strategy": self.configured.name,
            "params": self.configured.params_json(),
            "sequence": self._sequence,
            "direction": self._direction.value,
            "state": self.strategy.snapshot(),
        }

    def matches(self, strategy_state: Mapping[str, Any]) -> bool:
        """Whether ``strategy_state`` was written by this strategy with these parameters."""
        return (
            strategy_state.get("strategy") == self.configured.name
            and strategy_state.get("params") == self.configured.params_json()
        )

    def restore(
        self, strategy_state: Mapping[str, Any] | None, bar: Sequence[int | str | None] | None
    ) -> None:
        """Put back :meth:`strategy_state` and :meth:`bar_state` output (either may be None).

        State of another strategy or other parameters (:meth:`matches` False) keeps only its
        sequence (signal ids stay unique); the strategy starts afresh. Raises ValueError on
        state that is not a runner's."""
        if strategy_state is not None:
            if strategy_state.get("version") != RUNNER_STATE_VERSION:
                raise ValueError(
                    f"unsupported strategy state version {strategy_state.get('version')!r}"
                )
            self._sequence = int(strategy_state["sequence"])
            if self.matches(strategy_state):
                self._direction = SignalDirection(strategy_state["direction"])
                self.strategy.restore(strategy_state["state"])
        if bar is not None:
            if len(bar) != 10:
                raise ValueError(f"bar state must have 10 fields: {bar!r}")
            if bar[0] is None:
                self._start = None
            else:
                values = [int(v) for v in bar if v is not None]
                if len(values) != 10:
                    raise ValueError(f"bar state is partly defined: {bar!r}")
                (
                    self._start,
                    self._open,
                    self._open_ts,
                    self._high,
                    self._low,
                    self._close,
                    self._close_ts,
                    self._volume,
                    self._count,
                    _,
                ) = values
            self._late = int(bar[9] or 0)

    def adopt(
        self,
        *,
        sequence: int,
        direction: SignalDirection,
        open_bar: tuple[int, int, int] | None,
        late: int,
    ) -> None:
        """Take over from a machine that kept less (the SMA machine before plugins): the
        emissions so far, the last target, and the open bar as ``(start, close, close_ts)``
        (its open, high and low become the close; volume unknown: 0)."""
        self._sequence, self._direction, self._late = sequence, direction, late
        if open_bar is None:
            self._start = None
            return
        start, close, close_ts = open_bar
        self._start, self._open, self._high, self._low, self._close = start, *[close] * 4
        self._open_ts = self._close_ts = close_ts
        self._volume, self._count = 0, 1
