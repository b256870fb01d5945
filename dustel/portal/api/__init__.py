"""The Kundencenter's HTTP API (``/api/v1``): one router per concern, each a
thin shell over the modules the CLI commands call."""
