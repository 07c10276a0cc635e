"""Storage: engine and sessions (engine.py), tables (models.py), queries (repo.py).

Knows nothing of Telegram; the rest of the bot imports from here, never the reverse.
"""

from bot.db.engine import create_engine, create_session_factory, ping, upgrade_database

__all__ = ["create_engine", "create_session_factory", "ping", "upgrade_database"]
