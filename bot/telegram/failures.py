"""What Telegram's errors mean for us, for replies and notifications alike."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiogram import Bot
from aiogram.client.session.middlewares.base import (
    BaseRequestMiddleware,
    NextRequestMiddlewareType,
)
from aiogram.exceptions import (
    ClientDecodeError,
    TelegramAPIError,
    TelegramBadRequest,
    TelegramForbiddenError,
    TelegramNetworkError,
    TelegramRetryAfter,
    TelegramServerError,
)
from aiogram.methods import Response, TelegramMethod

log = logging.getLogger(__name__)

# Telegram itself failing, not our code nor the chat: one log line, no traceback.
TELEGRAM_TROUBLE = (
    TelegramNetworkError,
    TelegramServerError,
    TelegramRetryAfter,
    ClientDecodeError,
)
# 400 Bad Request descriptions that mean the chat itself is gone (403 always does).
GONE_MARKERS = ("chat not found", "user is deactivated", "bot was kicked", "peer_id_invalid")


def describe(exc: TelegramAPIError | ClientDecodeError) -> str:
    """One log line: aiogram's str() of a retry_after runs over three lines (a FAQ link),
    and a ClientDecodeError's carries the whole body it could not decode."""
    first_line = next(iter(exc.message.splitlines()), "")
    return f"{type(exc).__name__}: {first_line}"[:200]


def chat_gone(exc: TelegramAPIError) -> bool:
    """The person blocked the bot or no longer exists: nothing will reach them."""
    if isinstance(exc, TelegramForbiddenError):
        return True
    return isinstance(exc, TelegramBadRequest) and any(
        marker in exc.message.lower() for marker in GONE_MARKERS
    )


class WaitOutFloodControl(BaseRequestMiddleware):
    """Answers to people wait out Telegram's retry_after and go again, a bounded number
    of times and never for long: a person is waiting. Telegram did not take the
    request, so repeating it sends nothing twice. (The dispatcher's sends do not come
    here: it reschedules the row and lets other chats go on.)"""

    def __init__(self, *, attempts: int = 3, longest_wait: float = 10.0) -> None:
        self._attempts = attempts
        self._longest_wait = longest_wait

    async def __call__(
        self, make_request: NextRequestMiddlewareType[Any], bot: Bot, method: TelegramMethod[Any]
    ) -> Response[Any]:
        attempt = 1
        while True:
            try:
                return await make_request(bot, method)
            except TelegramRetryAfter as exc:
                if attempt >= self._attempts or exc.retry_after > self._longest_wait:
                    raise
                log.info(
                    "Telegram asks to wait %ss before %s", exc.retry_after, type(method).__name__
                )
                await asyncio.sleep(exc.retry_after)
            attempt += 1
