"""Starex API client; knows nothing of Telegram or the database."""

from bot.starex.client import OnRequest, StarexClient
from bot.starex.errors import StarexAuthError, StarexError, StarexNotFound, StarexUnavailable
from bot.starex.models import State, Trace, TraceStep

__all__ = [
    "OnRequest",
    "StarexAuthError",
    "StarexClient",
    "StarexError",
    "StarexNotFound",
    "StarexUnavailable",
    "State",
    "Trace",
    "TraceStep",
]
