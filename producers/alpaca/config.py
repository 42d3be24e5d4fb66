"""Alpaca adapter configuration: typed, frozen, built once at start-up.

Credentials come from :class:`core.config.Settings` (``APCA_API_KEY_ID`` /
``APCA_API_SECRET_KEY``, or their ``OMNIQUANT_FEEDS__ALPACA_*`` forms);
:meth:`AlpacaConfig.from_settings` fails at start, naming the variables that are missing.
The endpoint URLs are the SDK's own unless overridden (tests point them at loopback servers).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from core.config import Settings
from core.errors import MissingCredentialError

__all__ = ["DEFAULT_CHANNELS", "AlpacaConfig", "Channel", "DataFeed"]

DataFeed = Literal["iex", "sip"]
#: market-data stream channels, named as in Alpaca's subscribe message
Channel = Literal["trades", "quotes", "bars", "updatedBars", "dailyBars"]
DEFAULT_CHANNELS: tuple[Channel, ...] = ("trades", "quotes", "bars")

_KEY_ENV = "APCA_API_KEY_ID"
_SECRET_ENV = "APCA_API_SECRET_KEY"  # noqa: S105 - a variable name, not a secret


class AlpacaConfig(BaseModel):
    """Everything the Alpaca market-data and trade-updates feeds need."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    api_key_id: SecretStr
    api_secret_key: SecretStr
    data_feed: DataFeed = Field(
        default="iex", description="iex (free, IEX only) or sip (all US venues; subscription)"
    )
    paper: bool = Field(default=True, description="paper-trading account (trade updates)")
    account: str = Field(
        default="",
        description="our account name on ExecutionReport/Fill; empty: 'paper' or 'live'",
    )
    channels: tuple[Channel, ...] = Field(
        default=DEFAULT_CHANNELS, min_length=1, description="channels subscribed per symbol"
    )
    data_stream_url: str | None = Field(
        default=None, description="market-data websocket URL; None: the SDK's for data_feed"
    )
    trading_stream_url: str | None = Field(
        default=None, description="trading websocket URL; None: the SDK's paper/live URL"
    )
    open_timeout_s: float = Field(default=10.0, gt=0, description="websocket handshake timeout")

    @model_validator(mode="before")
    @classmethod
    def _default_account(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("account"):
            data = {**data, "account": "paper" if data.get("paper", True) else "live"}
        return data

    @model_validator(mode="after")
    def _credentials_not_blank(self) -> AlpacaConfig:
        missing = _missing(self.api_key_id, self.api_secret_key)
        if missing:
            raise ValueError(f"blank Alpaca credential(s): {', '.join(missing)}")
        return self

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> AlpacaConfig:
        """Build from the platform settings; raise MissingCredentialError naming what is unset."""
        feeds = settings.feeds
        missing = _missing(feeds.alpaca_api_key_id, feeds.alpaca_api_secret_key)
        if missing:
            names = ", ".join(
                f"{var} (or OMNIQUANT_FEEDS__{var.replace('APCA_', 'ALPACA_')})" for var in missing
            )
            raise MissingCredentialError(f"Alpaca credentials not set: {names}")
        assert feeds.alpaca_api_key_id is not None and feeds.alpaca_api_secret_key is not None
        fields: dict[str, Any] = {
            "api_key_id": feeds.alpaca_api_key_id,
            "api_secret_key": feeds.alpaca_api_secret_key,
            "paper": feeds.alpaca_paper,
        }
        fields.update(overrides)
        return cls(**fields)


def _missing(key_id: SecretStr | None, secret: SecretStr | None) -> list[str]:
    missing = []
    if key_id is None or not key_id.get_secret_value().strip():
        missing.append(_KEY_ENV)
    if secret is None or not secret.get_secret_value().strip():
        missing.append(_SECRET_ENV)
    return missing
