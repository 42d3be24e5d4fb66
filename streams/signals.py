"""Signals app: trades → event-time bars → the configured strategy → signals and order requests.

The strategy is a plugin (:mod:`streams.logic.strategies`) chosen by ``settings.strategy``
(``name``, ``params``); each symbol gets a :class:`StrategyRunner` — the stage's own
event-time bars and one instance of the strategy — the same code a backtest runs.

State, per record key (the symbol), in the app's Quix state store (RocksDB + changelog):

``ohlc``      the open bar and the late count (:meth:`StrategyRunner.bar_state`): every trade
              changes it;
``strategy``  name, parameters, sequence, last target and the strategy's snapshot
              (:meth:`StrategyRunner.strategy_state`): only a bar close changes it;
``position``  the strategy's position: only an order changes it.

State the stage wrote before strategies were plugins (``sma`` and ``bar``, of
:class:`streams.logic.sma.SmaCrossover`) is taken over at a symbol's first trade
(:func:`adopt_sma_machine`) and rewritten in this layout at the next commit.

The hot path. A Quix state read and write per trade would cost more than the rest of the
app together (≈10 µs of CPU against ≈2 µs; ``benchmarks/bench_signals.py --breakdown``), so
the runners of the symbols seen live in memory (:class:`SymbolStates`) and what changed is
written to the store right before Quix commits a checkpoint: ``ohlc`` for every symbol
traded since the last commit, ``strategy`` only for those whose bar closed. That checkpoint
commits the offsets of those very trades, so the store always holds the state of exactly the
committed trades: a restart (SIGTERM, or SIGKILL mid-checkpoint) resumes from the first
uncommitted trade with the state before it, and reproduces the same signals (at-least-once:
a signal produced after the last commit may be produced again, with the same id). A
partition's symbols are dropped from memory when it is revoked, lost or assigned; the next
trade of a symbol reads its state back from the store, which Quix has recovered from the
changelog.

Trades are decoded straight to dicts (no pydantic); signals and orders are built as models
(rare) and written as their dicts. One dataframe step per trade: the apply sends undecodable
bytes to the dead letters and returns the trade's signals (almost always none), and
``expand`` ends the dataframe there for all the others.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final

from quixstreams import State, message_context
from quixstreams.dataframe import StreamingDataFrame
from quixstreams.utils.json import dumps as quix_json_dumps

from core.config import Settings
from core.logs import correlated
from core.metrics import LATE_TRADES
from schemas.models import Signal
from streams.logic.orders import signal_to_order
from streams.logic.strategies import Configured, StrategyRunner, configure
from streams.logic.strategies.sma_crossover import adopt_sma_machine
from streams.runtime import (
    DeadLetters,
    StreamApp,
    Undecodable,
    correlation_headers,
    now_ns,
    require_event_time,
)

log = logging.getLogger(__name__)

BAR_KEY: Final = "ohlc"
STRATEGY_KEY: Final = "strategy"
POSITION_KEY: Final = "position"
LEGACY_BAR_KEY: Final = "bar"  # SmaCrossover.bar_state(), before strategies were plugins
LEGACY_SMA_KEY: Final = "sma"  # SmaCrossover.sma_state() / snapshot()
_NO_SIGNALS: Final[tuple[()]] = ()


def _stored(value: Any) -> bytes:
    """``value`` as the store serializes it (read back with ``state.get``), in a bytes object
    of its own size: orjson's output keeps its whole growth buffer (4 KB), which the store
    would hold until the commit: ≈40 MB at a commit after trades of 5,000 symbols."""
    return bytes(memoryview(quix_json_dumps(value)))


class _Symbol:
    """One key's runner in memory, the partition it came from, and whether ``strategy``
    changed."""

    __slots__ = ("partition", "runner", "strategy_dirty")

    def __init__(self, runner: StrategyRunner, partition: int, strategy_dirty: bool) -> None:
        self.runner = runner
        self.partition = partition
        self.strategy_dirty = strategy_dirty


class SymbolStates:
    """The strategy runners of the keys seen, written to the Quix store before each commit.

    Bound to the dataframe whose store holds them: its checkpoint commits go through
    :meth:`flush` first (every commit: on time, on revoke, on stop), and its partition
    assignments and revocations drop the partition's keys from memory. Quix has no public
    hook for either: these wrap ``ProcessingContext.commit_checkpoint`` and
    ``StateStoreManager.on_partition_assign`` / ``on_partition_revoke`` (quixstreams 3.28;
    a missing one fails at build time, and tests/test_signals_restart.py fails if a wrap
    stops being called).
    """

    def __init__(self, sdf: StreamingDataFrame, fresh: Callable[[], StrategyRunner]) -> None:
        self._context = sdf.processing_context
        self._stream_id = sdf.stream_id
        if not self._context.state_manager.stores.get(self._stream_id):
            raise RuntimeError(
                f"stream {self._stream_id} has no state store: give it a stateful step first"
            )
        self._fresh = fresh
        self.symbols: dict[Any, _Symbol] = {}
        self.dirty: dict[Any, _Symbol] = {}
        self._hook_commits()
        self._hook_partitions()

    def load(self, key: Any) -> _Symbol:
        """The key's runner from the store (or a new one), kept in memory from now on."""
        partition = message_context().partition
        state = self._state(partition, key)
        runner = self._fresh()
        stored = state.get(STRATEGY_KEY)
        if stored is not None:
            runner.restore(stored, state.get(BAR_KEY))
            same = runner.matches(stored)
        else:
            legacy = state.get(LEGACY_SMA_KEY)
            if legacy is None:
                self.symbols[key] = entry = _Symbol(runner, partition, strategy_dirty=True)
                return entry
            same = adopt_sma_machine(runner, legacy, state.get(LEGACY_BAR_KEY))
        if not same:
            log.warning(
                "key %r: stored strategy state is of another strategy or other parameters; "
                "the strategy %s starts afresh (signal sequence kept)",
                key,
                runner.configured.name,
            )
        # State written in another layout or by another strategy is rewritten at the commit.
        entry = _Symbol(runner, partition, strategy_dirty=stored is None or not same)
        self.symbols[key] = entry
        return entry

    def flush(self) -> None:
        """Write what changed since the last commit into the current checkpoint's store."""
        dirty = self.dirty
        for key, entry in dirty.items():
            state = self._state(entry.partition, key)
            state.set_bytes(BAR_KEY, _stored(entry.runner.bar_state()))
            if entry.strategy_dirty:
                state.set_bytes(STRATEGY_KEY, _stored(entry.runner.strategy_state()))
                entry.strategy_dirty = False
        dirty.clear()

    def drop_partition(self, partition: int) -> None:
        for key in [k for k, entry in self.symbols.items() if entry.partition == partition]:
            del self.symbols[key]
            self.dirty.pop(key, None)

    def _state(self, partition: int, key: Any) -> State[str, Any]:
        # The same store and key prefix as a `stateful=True` step of this dataframe gets.
        transaction = self._context.checkpoint.get_store_transaction(self._stream_id, partition)
        state: State[str, Any] = transaction.as_state(prefix=key)
        return state

    def _hook_commits(self) -> None:
        context = self._context
        commit = context.commit_checkpoint

        def commit_checkpoint(force: bool = False, **kwargs: Any) -> None:
            # Decide once whether this call commits, flush, then let Quix commit: deciding
            # twice could see the deadline pass in between and commit without the flush.
            if not force and not context.checkpoint.expired():
                return
            self.flush()
            commit(force=True, **kwargs)

        setattr(context, "commit_checkpoint", commit_checkpoint)  # noqa: B010 - a method, replaced

    def _hook_partitions(self) -> None:
        manager = self._context.state_manager
        for name in ("on_partition_assign", "on_partition_revoke"):
            setattr(manager, name, self._dropping(getattr(manager, name)))

    def _dropping(self, method: Callable[..., Any]) -> Callable[..., Any]:
        def hook(*args: Any, **kwargs: Any) -> Any:
            stream_id = kwargs["stream_id"] if "stream_id" in kwargs else args[0]
            partition = kwargs["partition"] if "partition" in kwargs else args[1]
            if stream_id == self._stream_id:
                self.drop_partition(partition)
            return method(*args, **kwargs)

        return hook


class SignalsProcessor:
    """Wires the strategy runners and the order logic to the app's state. No I/O of its own.

    The strategy is loaded and its parameters validated here: a bad name or parameter stops
    the stage at start (:class:`streams.logic.strategies.StrategyError`, a ConfigError)."""

    def __init__(self, settings: Settings, dead_letters: DeadLetters | None = None) -> None:
        self.strategy = settings.strategy
        self.configured: Configured = configure(
            self.strategy.name, self.strategy.params, self.strategy.default_params()
        )
        self.quantity = self.configured.params.quantity_raw
        self.dead_letters = dead_letters
        self.states: SymbolStates | None = None

    def bind(self, sdf: StreamingDataFrame) -> None:
        """Keep the runners in ``sdf``'s state store (it must have one: a stateful step)."""
        self.states = SymbolStates(sdf, self.fresh)

    def fresh(self) -> StrategyRunner:
        return StrategyRunner(self.configured, self.strategy.bar_interval_ms)

    def on_trade(
        self, trade: dict[str, Any] | Undecodable, key: Any, timestamp: int, headers: Any
    ) -> tuple[dict[str, Any], ...]:
        """The signals of one trade (almost always none).

        Undecodable bytes go to the dead letters here rather than in a filter step of their
        own (:meth:`StreamApp.dataframe`): one dataframe step less for every trade.
        """
        if isinstance(trade, Undecodable):
            assert self.dead_letters is not None, "no dead letters to send undecodable bytes to"
            self.dead_letters.keep_decodable(trade, key, timestamp, headers)
            return _NO_SIGNALS
        # A pre-epoch trade is dead-lettered (OutOfRange) before it reaches the runner: its
        # bar state could not be written at the next commit, which would stop the stage.
        require_event_time(trade)
        states = self.states
        assert states is not None, "bind() the processor to its dataframe first"
        entry = states.symbols.get(key)
        if entry is None:
            entry = states.load(key)
        step = entry.runner.on_trade(trade["price"], trade["size"], trade["ts_event"])
        states.dirty[key] = entry
        if not step.bar_closed:
            if step.late:
                LATE_TRADES.inc()
            return _NO_SIGNALS
        entry.strategy_dirty = True
        if not step.emissions:
            return _NO_SIGNALS
        strategy_id, symbol = self.strategy.strategy_id, trade["symbol"]
        return tuple(
            Signal(
                signal_id=f"{strategy_id}-{symbol}-{emission.sequence}",
                strategy_id=strategy_id,
                symbol=symbol,
                direction=emission.direction,
                price=emission.price,
                fast_value=emission.values[0],
                slow_value=emission.values[1],
                ts_event=emission.ts_event,
                ts_init=now_ns(),
            ).model_dump()
            for emission in step.emissions
        )

    def on_signal(self, signal: dict[str, Any], state: State[str, Any]) -> dict[str, Any] | None:
        """The order request a signal asks for, given the position (None when at target)."""
        position = int(state.get(POSITION_KEY, 0))
        model = Signal.model_validate(signal)
        order = signal_to_order(
            model,
            current_position=position,
            quantity=self.quantity,
            ts_init=model.ts_init,
            account=self.strategy.account,
        )
        if order is None:
            return None
        state.set(
            POSITION_KEY, position + (order.quantity if order.side == "BUY" else -order.quantity)
        )
        with correlated(order.client_order_id):
            log.info("order request", extra={"signal_id": model.signal_id, "side": order.side})
        return order.model_dump()


def build(settings: Settings, name: str) -> StreamApp:
    """The app under the stage name the registry gives it (its group and dead letters)."""
    stream = StreamApp(settings, name)
    processor = SignalsProcessor(settings, stream.dead_letters)
    # Not stream.dataframe(): on_trade sends undecodable bytes to the dead letters itself.
    trades = stream.app.dataframe(stream.topic("market.trades"))
    signals = trades.apply(processor.on_trade, metadata=True, expand=True)

    # Two branches of the (rare) signals: first the signal itself, then its order.
    signals.set_headers(correlation_headers("signal_id")).to_topic(stream.topic("signals"))
    orders = signals.apply(processor.on_signal, stateful=True).filter(lambda o: o is not None)
    orders.set_headers(correlation_headers("client_order_id")).to_topic(
        stream.topic("orders.requests")
    )
    processor.bind(trades)  # the stateful step above gave the trades' stream its store
    return stream


def run(settings: Settings, *, name: str) -> None:
    build(settings, name).run()
