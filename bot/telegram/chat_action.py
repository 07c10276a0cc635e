"""The "typing…" indicator while a person waits for Starex."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiogram import Bot
from aiogram.enums import ChatAction

log = logging.getLogger(__name__)


@asynccontextmanager
async def typing(bot: Bot, chat_id: int, *, every: float = 5.0) -> AsyncIterator[None]:
    """Shows "typing…" (Telegram keeps it about 5 s) until the block ends.

    A courtesy only. aiogram's ChatActionSender leaves a failed send as "Task exception
    was never retrieved" and makes the answer wait for a retry_after; here a failure is
    ignored and the task is cancelled when the block ends, not awaited to its end."""

    async def keep_typing() -> None:
        while True:
            try:
                await bot.send_chat_action(chat_id, ChatAction.TYPING)
            except Exception as exc:  # whatever it is, the answer goes on
                log.debug("typing indicator not shown in chat %s: %s", chat_id, type(exc).__name__)
            await asyncio.sleep(every)

    task = asyncio.create_task(keep_typing())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.wait({task})
