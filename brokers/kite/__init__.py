"""Kite venue: kiteconnect place / modify / cancel, postbacks and order-book polls."""
