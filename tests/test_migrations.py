"""Migrations: stairway (up → down → up, one revision at a time and all at once), the
models match the migrations, and the ways the bot and the CLI run them."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

import bot.db.engine as engine_module
from bot.db.engine import (
    UnknownRevisionError,
    alembic_config,
    create_engine,
    migrations_dir,
    upgrade_database,
)
from bot.db.models import Base

REPO = Path(__file__).resolve().parents[1]
APP_TABLES = {table.name for table in Base.metadata.sorted_tables}


async def run_alembic(engine: AsyncEngine, fn: Callable[..., Any], *args: Any) -> None:
    def run(connection: Connection) -> None:
        fn(alembic_config(connection), *args)

    async with engine.connect() as connection:
        await connection.run_sync(run)
        await connection.commit()


async def table_names(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as connection:
        return set(await connection.run_sync(lambda c: inspect(c).get_table_names()))


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as connection:
        return await connection.run_sync(
            lambda c: MigrationContext.configure(c).get_current_revision()
        )


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


async def test_stairway(db_url: str) -> None:
    revisions = list(ScriptDirectory.from_config(alembic_config()).walk_revisions())
    assert revisions, "no migrations found"
    engine = create_engine(db_url)
    try:
        # One step at a time, oldest first: each downgrade must undo its upgrade.
        for revision in reversed(revisions):
            await run_alembic(engine, command.upgrade, revision.revision)
            await run_alembic(engine, command.downgrade, revision.down_revision or "base")
            await run_alembic(engine, command.upgrade, revision.revision)
            assert await current_revision(engine) == revision.revision

        # The whole way: head → base → head.
        assert await table_names(engine) >= APP_TABLES
        await run_alembic(engine, command.downgrade, "base")
        assert await table_names(engine) <= {"alembic_version"}
        assert await current_revision(engine) is None
        await run_alembic(engine, command.upgrade, "head")
        assert await table_names(engine) >= APP_TABLES
        assert await current_revision(engine) == head_revision()
    finally:
        await engine.dispose()


async def test_models_match_migrations(engine: AsyncEngine) -> None:
    def diff(connection: Connection) -> list[Any]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return compare_metadata(context, Base.metadata)

    async with engine.connect() as connection:
        assert await connection.run_sync(diff) == []


async def test_upgrade_database_from_url_is_idempotent(db_url: str) -> None:
    await upgrade_database(db_url)
    await upgrade_database(db_url)  # already at head: nothing to do, no error
    engine = create_engine(db_url)
    try:
        assert await current_revision(engine) == head_revision()
        assert await table_names(engine) >= APP_TABLES
    finally:
        await engine.dispose()


async def test_database_of_a_newer_version_is_refused_untouched(db_url: str) -> None:
    engine = create_engine(db_url)
    try:
        await upgrade_database(engine)
        async with engine.begin() as connection:  # as a later release would leave it
            await connection.execute(text("UPDATE alembic_version SET version_num = '0099'"))
        with pytest.raises(UnknownRevisionError, match=r"newer starex-bot version.*0099"):
            await upgrade_database(engine)
        assert await current_revision(engine) == "0099"
        assert await table_names(engine) >= APP_TABLES
    finally:
        await engine.dispose()


async def test_upgrade_database_creates_sqlite_folder(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "data" / "bot.db"
    await upgrade_database(f"sqlite+aiosqlite:///{path}")
    assert path.is_file()


async def test_upgrade_leaves_sqlite_foreign_keys_on(tmp_path: Path) -> None:
    # env.py turns them off for batch migrations; pooled connections must get them back.
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}")
    try:
        await upgrade_database(engine)
        async with engine.connect() as connection:
            assert (await connection.exec_driver_sql("PRAGMA foreign_keys")).scalar() == 1
    finally:
        await engine.dispose()


def test_migrations_found_from_working_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A non-editable install puts the package in site-packages, away from migrations/.
    monkeypatch.setattr(engine_module, "PACKAGE_PARENT", tmp_path / "site-packages")
    monkeypatch.chdir(REPO)
    assert migrations_dir() == REPO / "migrations"


def test_missing_migrations_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(engine_module, "PACKAGE_PARENT", tmp_path / "site-packages")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RuntimeError, match="migrations folder not found"):
        migrations_dir()


async def test_alembic_cli(db_url: str) -> None:
    """`alembic upgrade head` from the repository uses DATABASE_URL and env.py's own loop."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "alembic",
        "upgrade",
        "head",
        cwd=REPO,
        env={**os.environ, "DATABASE_URL": db_url},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    assert process.returncode == 0, output.decode()
    engine = create_engine(db_url)
    try:
        assert await current_revision(engine) == head_revision()
    finally:
        await engine.dispose()
