"""keyservice: API keys exchanged for short-lived JWTs."""

__version__ = "0.1.0"
