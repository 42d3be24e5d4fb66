"""Kite Connect (Zerodha) settings for the feed, the REST client and the postback receiver.

Built from :class:`core.config.Settings` with :meth:`KiteConfig.from_settings`, which
fails at start naming the missing environment variable(s) (``KITE_API_KEY``,
``KITE_ACCESS_TOKEN``, ``KITE_API_SECRET``). Secrets stay ``SecretStr``: only the code that
puts them on the wire (the websocket URL, the REST ``Authorization`` header, the postback
checksum) reveals them, and none of it logs them.
"""

from __future__ import annotations

from typing import Final

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from core.config import Settings
from core.errors import MissingCredentialError

__all__ = ["DEFAULT_REST_URL", "DEFAULT_WS_URL", "KiteConfig"]

#: KiteTicker.ROOT_URI in kiteconnect/ticker.py; the documented websocket endpoint.
DEFAULT_WS_URL: Final = "wss://ws.kite.trade"
#: KiteConnect._default_root_uri in kiteconnect/connect.py.
DEFAULT_REST_URL: Final = "https://api.kite.trade"


class KiteConfig(BaseModel):
    """Credentials and endpoints. ``ws_url``/``rest_url`` are overridable for loopback tests."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    api_key: SecretStr
    access_token: SecretStr
    api_secret: SecretStr | None = Field(
        default=None, description="needed only to verify order postbacks"
    )
    ws_url: str = Field(default=DEFAULT_WS_URL, pattern=r"^wss?://")
    rest_url: str = Field(default=DEFAULT_REST_URL, pattern=r"^https?://")

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        require_api_secret: bool = True,
        ws_url: str = DEFAULT_WS_URL,
        rest_url: str = DEFAULT_REST_URL,
    ) -> KiteConfig:
        """Take the credentials from ``settings.feeds``.

        Raises :class:`MissingCredentialError` naming every missing ``KITE_*`` variable.
        ``require_api_secret=False`` for a market-data-only process (the secret is used only
        to verify postbacks).
        """
        feeds = settings.feeds
        missing = [
            var
            for var, value, needed in (
                ("KITE_API_KEY", feeds.kite_api_key, True),
                ("KITE_ACCESS_TOKEN", feeds.kite_access_token, True),
                ("KITE_API_SECRET", feeds.kite_api_secret, require_api_secret),
            )
            if needed and (value is None or not value.get_secret_value())
        ]
        if missing:
            raise MissingCredentialError(
                "Kite Connect credentials missing: set "
                + ", ".join(missing)
                + " (or their OMNIQUANT_FEEDS__KITE_* forms)"
            )
        assert feeds.kite_api_key is not None and feeds.kite_access_token is not None
        return cls(
            api_key=feeds.kite_api_key,
            access_token=feeds.kite_access_token,
            api_secret=feeds.kite_api_secret,
            ws_url=ws_url,
            rest_url=rest_url,
        )
