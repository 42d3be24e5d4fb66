"""Redis clients of the long-running stages, riding out a short outage.

The risk gate (its exposure book) and execution (its submission reservations) cannot do
their work without Redis, and before this a refused connection ended execution at once
and made the gate refuse every order while Redis restarted. A client from
:func:`redis_client` retries a command that met a connection error or timeout with
capped exponential backoff (redis-py's ``Retry``, bounded by time) for up to
``OMNIQUANT_REDIS__OUTAGE_WAIT_S``; only then does the error reach the caller (the gate
then refuses the order, fail closed; execution stops with its offsets uncommitted).
The wait is one per outage, shared by every command in it (:class:`_OutageRetry`). Each
retry is counted in ``omniquant_redis_retries_total``; an outage's start and end are logged.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from core.config import Settings
from core.metrics import REDIS_RETRIES

log = logging.getLogger(__name__)
T = TypeVar("T")

_BASE_S, _CAP_S = 0.05, 1.0  # backoffs 0.1, 0.2, 0.4, 0.8 s, then 1 s each


class _OutageRetry(Retry):
    """redis-py's Retry bounded by one wait per outage rather than a count per command.

    The first failed command opens the outage and its deadline; every command in it retries
    until that deadline and no longer, and after it each command tries once. So a long
    outage costs the stage ``wait_s`` once, not per command (the gate issues several per
    order; its open Kafka transaction must not time out meanwhile). Counted and logged: a
    silent stall is the worst kind of outage on a trading desk."""

    def __init__(self, role: str, wait_s: float) -> None:
        super().__init__(ExponentialBackoff(cap=_CAP_S, base=_BASE_S), retries=-1)
        self._role = role
        self._wait_s = wait_s
        self._lock = threading.Lock()
        self._outage_since: float | None = None
        self._deadline = -math.inf

    def __deepcopy__(self, memo: dict[int, Any]) -> _OutageRetry:
        # redis-py copies the retry into each connection; an outage is one for all of a
        # client's connections (one deadline, one warning).
        return self

    def call_with_retry(
        self,
        do: Callable[[], T],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> T:
        failures = 0
        while True:
            try:
                result = do()
            except self._supported_errors as error:
                failures += 1
                # ``fail`` disconnects, so that the next try opens a fresh connection
                if with_failure_count:
                    fail(error, failures)
                else:
                    fail(error)
                retryable = (self._is_retryable is None or self._is_retryable(error)) and (
                    is_retryable is None or is_retryable(error)
                )
                delay = self._backoff.compute(failures)
                if not retryable:
                    raise
                if time.monotonic() + delay > self._failed(error):
                    self._deadline = -math.inf  # given up: the rest of the outage tries once
                    raise
                REDIS_RETRIES.labels(self._role).inc()
                time.sleep(delay)
            else:
                if self._outage_since is not None:
                    self._answered()
                return result

    def _failed(self, error: Exception) -> float:
        """The deadline of the outage this failure belongs to (opening one if none is)."""
        with self._lock:
            if self._outage_since is not None:
                return self._deadline
            now = time.monotonic()
            self._outage_since, self._deadline = now, now + self._wait_s
        log.warning(
            "Redis does not answer; retrying",
            extra={"role": self._role, "error": type(error).__name__, "wait_s": self._wait_s},
        )
        return self._deadline

    def _answered(self) -> None:
        with self._lock:
            since, self._outage_since = self._outage_since, None
        if since is not None:
            log.warning(
                "Redis answers again",
                extra={"role": self._role, "outage_s": round(time.monotonic() - since, 3)},
            )


def redis_client(settings: Settings, role: str, *, socket_timeout: float) -> redis.Redis:
    """A client of the configured Redis that retries through an outage (module docstring)."""
    return redis.Redis.from_url(
        settings.redis_url(),
        socket_timeout=socket_timeout,
        socket_connect_timeout=min(socket_timeout, 2.0),
        retry=_OutageRetry(role, settings.redis.outage_wait_s),
    )
