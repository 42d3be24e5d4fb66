"""Signal → order request, target-position style. Pure: no I/O, no clock.

A signal names the position the strategy wants: LONG → ``+quantity``, SHORT → ``-quantity``,
FLAT → 0. The order is the difference between that target and the strategy's current
position (the caller's state), so replaying a signal at the target produces no order.

Client order ids are deterministic, so a replay produces the same ids (and a broker that
enforces unique client ids refuses a duplicate instead of trading twice)::

    <strategy_id[:16]>-<symbol[:16]>-<24 hex>      (at most 58 characters)

The hex part is a BLAKE2b digest of (account, strategy_id, symbol, signal_id, ts_event,
direction): one signal gives at most one order id per account. The readable prefix is for
people only (characters outside ``[A-Za-z0-9._-]`` become ``_``); the digest carries the
identity, so truncating a long strategy id or symbol cannot make two ids collide.
"""

from __future__ import annotations

import hashlib
import re
from typing import Final

from schemas.models import OrderRequest, OrderType, Side, Signal, SignalDirection, TimeInForce

__all__ = ["client_order_id_for", "signal_to_order", "target_position"]

_PREFIX_PART_MAX: Final = 16
_DIGEST_BYTES: Final = 12
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def target_position(direction: SignalDirection, quantity: int) -> int:
    """The signed position a signal asks for: LONG → +quantity, SHORT → -quantity, FLAT → 0."""
    if quantity <= 0:
        raise ValueError(f"quantity must be positive, got {quantity}")
    if direction == SignalDirection.LONG:
        return quantity
    if direction == SignalDirection.SHORT:
        return -quantity
    return 0


def client_order_id_for(signal: Signal, account: str = "paper") -> str:
    """The deterministic client order id of the order a signal produces (≤ 64 chars)."""
    identity = "\x1f".join(
        (
            account,
            signal.strategy_id,
            signal.symbol,
            signal.signal_id,
            str(signal.ts_event),
            signal.direction.value,
        )
    )
    digest = hashlib.blake2b(identity.encode(), digest_size=_DIGEST_BYTES).hexdigest()
    strategy = _UNSAFE.sub("_", signal.strategy_id[:_PREFIX_PART_MAX])
    symbol = _UNSAFE.sub("_", signal.symbol[:_PREFIX_PART_MAX])
    return f"{strategy}-{symbol}-{digest}"


def signal_to_order(
    signal: Signal,
    *,
    current_position: int,
    quantity: int,
    ts_init: int,
    account: str = "paper",
    time_in_force: TimeInForce = TimeInForce.DAY,
) -> OrderRequest | None:
    """The market order moving ``current_position`` (signed raw) to the signal's target of
    ``quantity`` (positive raw); None when already at the target.

    ``reference_price`` is the signal's price (the close that triggered it) so the risk gate
    can check notional; ``ts_event`` is the signal's event time.
    """
    delta = target_position(signal.direction, quantity) - current_position
    if delta == 0:
        return None
    return OrderRequest(
        client_order_id=client_order_id_for(signal, account),
        strategy_id=signal.strategy_id,
        account=account,
        symbol=signal.symbol,
        side=Side.BUY if delta > 0 else Side.SELL,
        order_type=OrderType.MARKET,
        quantity=abs(delta),
        time_in_force=time_in_force,
        reference_price=signal.price,
        ts_event=signal.ts_event,
        ts_init=ts_init,
    )
