"""Polygon.io / Massive settings for the WebSocket feed and the REST backfill.

Built from :class:`core.config.Settings` with :meth:`PolygonConfig.from_settings`, which
fails at start naming ``MASSIVE_API_KEY`` when no key is set. The key stays a ``SecretStr``:
only the code that hands it to the SDK (the WebSocket ``auth`` action, the REST
``Authorization`` header) reveals it, and nothing here logs it.

``ws_url`` / ``rest_base_url`` point the SDK elsewhere (a loopback server in tests); the SDK
appends the market as the WebSocket path (``<ws_url>/stocks``), exactly as it does for its
own hosts.
"""

from __future__ import annotations

from typing import Final, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from core.config import Settings
from core.errors import MissingCredentialError

__all__ = ["DEFAULT_REST_BASE_URL", "FEED_HOSTS", "Channel", "PolygonConfig"]

#: massive.rest.BASE in the SDK.
DEFAULT_REST_BASE_URL: Final = "https://api.massive.com"
#: massive.websocket.models.common.Feed.RealTime / Feed.Delayed.
FEED_HOSTS: Final[dict[str, str]] = {
    "realtime": "socket.massive.com",
    "delayed": "delayed.massive.com",
}

#: Stock channels we turn into records: trades, NBBO quotes, second and minute aggregates.
Channel = Literal["T", "Q", "A", "AM"]


class PolygonConfig(BaseModel):
    """Credentials, endpoints and feed choices. Frozen; passed to the feed and the backfill."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    api_key: SecretStr
    market: Literal["stocks"] = "stocks"
    feed: Literal["realtime", "delayed"] = "realtime"
    ws_url: str | None = Field(
        default=None,
        description="ws[s]://host[:port] of the WebSocket cluster, no path (tests: loopback). "
        "Unset: wss:// on the host of `feed`.",
    )
    rest_base_url: str = Field(default=DEFAULT_REST_BASE_URL, pattern=r"^https?://[^/]+$")
    channels: tuple[Channel, ...] = Field(default=("T", "Q", "A", "AM"), min_length=1)
    connect_timeout_s: float = Field(default=10.0, gt=0, description="open + auth reply")
    close_timeout_s: float = Field(default=2.0, gt=0)
    max_frame_bytes: int = Field(default=16 * 2**20, ge=2**16)
    queue_frames: int = Field(
        default=10_000, ge=1, description="frames buffered between the socket and events()"
    )
    rest_timeout_s: float = Field(default=10.0, gt=0)
    rest_retries: int = Field(default=3, ge=0, description="SDK retries on 429/5xx")

    @field_validator("ws_url")
    @classmethod
    def _ws_url_is_a_bare_origin(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("ws", "wss") or not parts.netloc:
            raise ValueError("ws_url must look like ws[s]://host[:port]")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError("ws_url takes no path: the SDK appends /<market>")
        return value

    @property
    def ws_host(self) -> str:
        """host[:port] the SDK connects to (its ``feed`` argument)."""
        if self.ws_url is None:
            return FEED_HOSTS[self.feed]
        return urlsplit(self.ws_url).netloc

    @property
    def ws_secure(self) -> bool:
        """wss:// (TLS, verified against the SDK's CA bundle) or plain ws://."""
        return self.ws_url is None or self.ws_url.startswith("wss://")

    @property
    def ws_endpoint(self) -> str:
        """The URL the SDK opens, for logs: ``ws[s]://<host>/<market>``."""
        return f"ws{'s' if self.ws_secure else ''}://{self.ws_host}/{self.market}"

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        feed: Literal["realtime", "delayed"] = "realtime",
        ws_url: str | None = None,
        rest_base_url: str = DEFAULT_REST_BASE_URL,
        channels: tuple[Channel, ...] = ("T", "Q", "A", "AM"),
    ) -> PolygonConfig:
        """Take the API key from ``settings.feeds.polygon_api_key``.

        Raises :class:`MissingCredentialError` naming ``MASSIVE_API_KEY`` when it is unset.
        """
        key = settings.feeds.polygon_api_key
        if key is None or not key.get_secret_value().strip():
            raise MissingCredentialError(
                "Polygon/Massive API key missing: set MASSIVE_API_KEY "
                "(or POLYGON_API_KEY, or OMNIQUANT_FEEDS__POLYGON_API_KEY)"
            )
        return cls(
            api_key=key,
            feed=feed,
            ws_url=ws_url,
            rest_base_url=rest_base_url,
            channels=channels,
        )
