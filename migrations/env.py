"""Alembic environment, used both by the `alembic` CLI and by bot.db.upgrade_database.

From code, the caller hands over a connection in `config.attributes["connection"]`
(alembic's "connection sharing with asyncio" recipe); from the CLI, an async engine is
created here for DATABASE_URL (environment or `.env`, like the bot itself).
"""

import asyncio
from logging.config import fileConfig

from alembic import context
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import Connection

from bot.db.engine import create_engine
from bot.db.models import Base

config = context.config
target_metadata = Base.metadata


class _DatabaseSettings(BaseSettings):
    # Only the database URL: the CLI must not require the bot's token and other secrets.
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    database_url: str = "sqlite+aiosqlite:///data/bot.db"  # same default as bot.config


def _sqlite_foreign_keys(connection: Connection, enabled: bool) -> None:
    # Through the DBAPI cursor, not connection.execute(): that would open a transaction,
    # and SQLite silently ignores this pragma inside one.
    cursor = connection.connection.cursor()
    try:
        cursor.execute(f"PRAGMA foreign_keys={'ON' if enabled else 'OFF'}")
    finally:
        cursor.close()


def do_run_migrations(connection: Connection) -> None:
    is_sqlite = connection.dialect.name == "sqlite"
    if is_sqlite:
        # Batch mode rebuilds a table by copy-and-drop; with foreign keys on, dropping
        # `users` would cascade-delete every subscription and outbox row.
        _sqlite_foreign_keys(connection, False)
    try:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=is_sqlite,  # SQLite's ALTER TABLE can't do most changes
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
    finally:
        if is_sqlite:
            _sqlite_foreign_keys(connection, True)


def run_migrations_offline() -> None:
    context.configure(
        url=_DatabaseSettings().database_url,
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations() -> None:
    engine = create_engine(_DatabaseSettings().database_url)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(do_run_migrations)
            await connection.commit()
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        asyncio.run(run_async_migrations())
    else:
        do_run_migrations(connection)


# Only the CLI has an ini file; when the bot migrates itself its logging stays untouched.
if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)

if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
