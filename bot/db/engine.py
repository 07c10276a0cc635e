"""Engine and session factories, a health check, and migrations applied at startup."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event, make_url, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

log = logging.getLogger(__name__)

# The folder holding the `bot` package: the repository root in a checkout or an editable
# install, site-packages in a regular install. (Not `bot.__file__`: it is None whenever
# `bot` resolves as a namespace package, as an editable install made before
# bot/__init__.py existed does.)
PACKAGE_PARENT = Path(__file__).resolve().parents[2]

# Applied to every new SQLite connection: WAL lets readers run beside the one writer,
# busy_timeout makes a second writer wait instead of failing at once, SQLite leaves
# foreign keys off unless asked, and NORMAL is durable enough under WAL.
SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA busy_timeout=5000",
    "PRAGMA foreign_keys=ON",
    "PRAGMA synchronous=NORMAL",
)
# A health check must answer quickly even when the database hangs.
PING_TIMEOUT = 3.0


def _set_sqlite_pragmas(dbapi_connection: Any, record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        for pragma in SQLITE_PRAGMAS:
            cursor.execute(pragma)
        # The file this connection writes to, for ping() ("" when in memory).
        cursor.execute("PRAGMA database_list")
        path = next(row[2] for row in cursor.fetchall() if row[1] == "main")
    finally:
        cursor.close()
    if path:
        stat = os.stat(path)
        record.info["sqlite_file"] = (path, stat.st_dev, stat.st_ino)


def _sqlite_file_problem(info: dict[str, Any]) -> str | None:
    """Why the connection's SQLite file cannot keep what is written, if it cannot.

    SELECT 1 still succeeds on a file deleted or replaced under an open connection (the
    writes go to the unlinked inode, lost at restart) and on a read-only one.
    """
    if "sqlite_file" not in info:
        return None
    path, device, inode = info["sqlite_file"]
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return "the SQLite file was deleted"
    if (stat.st_dev, stat.st_ino) != (device, inode):
        return "the SQLite file was replaced"
    if not os.access(path, os.W_OK):
        return "the SQLite file is not writable"
    return None


class SQLiteFileGone(OSError):
    """The SQLite file cannot keep what is written (deleted, replaced or read-only)."""


async def check_sqlite_file(session: AsyncSession) -> None:
    """Raise SQLiteFileGone inside a transaction that must not be reported as stored."""
    problem = _sqlite_file_problem((await session.connection()).info)
    if problem is not None:
        raise SQLiteFileGone(problem)


def _connect_failure_as_dbapi_error(
    dialect: Any, _record: Any, cargs: Any, cparams: dict[str, Any]
) -> Any:
    """asyncpg lets a server it cannot reach surface as a bare OSError or TimeoutError,
    which SQLAlchemy passes through unwrapped. Make it the driver's OperationalError, so
    a database that is down is a SQLAlchemyError like any other database failure, for
    every `except SQLAlchemyError` in the bot (webhook, dispatcher, middleware, the
    status dictionary)."""
    try:
        return dialect.connect(*cargs, **cparams)
    except (OSError, TimeoutError) as exc:
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise dialect.loaded_dbapi.OperationalError(reason) from exc


def create_engine(url: str) -> AsyncEngine:
    sa_url = make_url(url)
    if sa_url.get_backend_name() != "sqlite":
        # Connections die behind our back (server restarts, idle timeouts).
        engine = create_async_engine(sa_url, pool_pre_ping=True)
        event.listen(engine.sync_engine, "do_connect", _connect_failure_as_dbapi_error)
        return engine
    database = sa_url.database
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    # One connection: SQLite has one writer at a time anyway, and waiting for the pool
    # is a fair asyncio queue, where waiting on SQLite's lock is a busy-wait in a
    # thread that starves under load (seconds-long webhook answers in bench/).
    engine = create_async_engine(sa_url, pool_size=1, max_overflow=0, pool_timeout=15)
    event.listen(engine.sync_engine, "connect", _set_sqlite_pragmas)
    return engine


def create_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    # expire_on_commit=False: objects stay readable after commit without a lazy
    # reload, which asyncio cannot do implicitly.
    return async_sessionmaker(engine, expire_on_commit=False)


async def ping(engine: AsyncEngine) -> bool:
    """True when the database answers `SELECT 1` within PING_TIMEOUT seconds and, for
    SQLite, its file is still the one opened and writable (a few stat calls)."""
    try:
        async with asyncio.timeout(PING_TIMEOUT), engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
            problem = _sqlite_file_problem(connection.info)
    except Exception as exc:  # a health check reports any failure as "down"
        log.warning("database ping failed: %s", type(exc).__name__)
        return False
    if problem is not None:
        log.warning("database ping failed: %s", problem)
        return False
    return True


def migrations_dir() -> Path:
    """The repository's `migrations` folder.

    It is not part of the Python package, so look beside the package (source checkout or
    editable install) and then in the working directory (non-editable install run from a
    checkout or a container whose WORKDIR holds the repository).
    """
    candidates = [PACKAGE_PARENT / "migrations", Path.cwd() / "migrations"]
    for candidate in candidates:
        if (candidate / "env.py").is_file():
            return candidate
    looked = ", ".join(str(c) for c in candidates)
    raise RuntimeError(
        f"Alembic migrations folder not found (looked in {looked}); "
        "run from the repository root or install the project in editable mode"
    )


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic config built in code, so it does not depend on where alembic.ini is.

    With `connection`, migrations/env.py runs on it instead of opening its own engine.
    """
    config = Config()
    # configparser interpolation: a literal % in the path must be doubled.
    config.set_main_option("script_location", str(migrations_dir()).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    if connection is not None:
        config.attributes["connection"] = connection
    return config


class UnknownRevisionError(RuntimeError):
    """The database is at a revision these migrations do not have."""


def _upgrade(connection: Connection, revision: str) -> None:
    config = alembic_config(connection)
    known = {script.revision for script in ScriptDirectory.from_config(config).walk_revisions()}
    unknown = sorted(set(MigrationContext.configure(connection).get_current_heads()) - known)
    if unknown:
        # Alembic's own error is a traceback ending in "Can't locate revision".
        raise UnknownRevisionError(
            f"the database was migrated by a newer starex-bot version (revision "
            f"{', '.join(unknown)}, unknown to this one); run that version or a later one"
        )
    # The read above began a transaction; env.py's SQLite pragma is ignored inside one.
    connection.rollback()
    command.upgrade(config, revision)


async def upgrade_database(engine_or_url: AsyncEngine | str, revision: str = "head") -> None:
    """Apply pending migrations. Safe to call from inside a running event loop: alembic
    runs synchronously on an async connection via run_sync (alembic's "connection
    sharing with asyncio" recipe), so env.py never calls asyncio.run here."""
    own_engine = isinstance(engine_or_url, str)
    engine = create_engine(engine_or_url) if own_engine else engine_or_url
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_upgrade, revision)
            await connection.commit()
    finally:
        if own_engine:
            await engine.dispose()
