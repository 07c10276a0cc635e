"""Runs the whole application in-process against the fake Telegram and fake Starex."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx

from bot.app import App, create_app, run
from bot.config import Settings, load_settings
from tests.fake_starex import LOGIN, PASSWORD

TOKEN = "123456:TEST-token-never-logged"
WEBHOOK_SECRET = "hook-secret-never-logged"


async def until(check: Callable[[], Awaitable[bool]], seconds: float, what: str) -> None:
    """Wait for a condition the code under test reaches in its own time."""
    deadline = time.monotonic() + seconds
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {seconds} s")
        await asyncio.sleep(0.05)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_settings(db_url: str, telegram_url: str, starex_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "bot_token": TOKEN,
        "telegram_api_url": telegram_url,
        "starex_base_url": starex_url,
        "starex_login": LOGIN,
        "starex_password": PASSWORD,
        "starex_webhook_secret": WEBHOOK_SECRET,
        "database_url": db_url,
        "host": "127.0.0.1",
        "port": free_port(),
        "default_language": "ru",
    }
    values.update(overrides)
    return load_settings(_env_file=None, **values)


async def serving(settings: Settings, task: asyncio.Task[None]) -> None:
    """Returns once the application `task` runs answers /healthz."""
    async with web_client(settings) as client:
        for _ in range(200):
            if task.done():
                task.result()  # start-up failed: raise its error here
            try:
                if (await client.get("/healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError("application did not start")


@asynccontextmanager
async def running(settings: Settings, **app_options: Any) -> AsyncIterator[App]:
    """Starts `run()` like `starex-bot` does and stops it like SIGTERM does."""
    app = create_app(settings, **app_options)
    stop = asyncio.Event()
    task = asyncio.create_task(run(app, stop))
    await serving(settings, task)
    try:
        yield app
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


def web_client(settings: Settings) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.port}")


def webhook_path(settings: Settings) -> str:
    return settings.starex_webhook_path
