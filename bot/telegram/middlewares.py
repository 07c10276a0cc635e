"""Outer middlewares: updates in flight; the user, their locale and the i18n context."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiogram import BaseMiddleware
from aiogram.types import TelegramObject, Update, User
from aiogram.utils.i18n import I18n
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.db import repo
from bot.i18n import Translator

log = logging.getLogger(__name__)

Handler = Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]]


class UpdatesInFlight(BaseMiddleware):
    """The updates being handled, for shutdown to let them finish: Telegram has been
    told they were received, so one cut off would never come again."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    async def __call__(self, handler: Handler, event: TelegramObject, data: dict[str, Any]) -> Any:
        task = asyncio.current_task()
        if task is None:  # not run by an event loop task: nothing to wait for
            return await handler(event, data)
        self._tasks.add(task)
        try:
            return await handler(event, data)
        finally:
            self._tasks.discard(task)

    async def wait(self) -> None:
        """Until those handled now are done (cancelling this leaves them running)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks))


class UserMiddleware(BaseMiddleware):
    """Any message from a person means they can be reached again (reactivates a user
    who had blocked the bot) and tells us their Telegram language.

    Registered on updates, so the error handler gets the same `locale` in its data."""

    async def __call__(self, handler: Handler, event: TelegramObject, data: dict[str, Any]) -> Any:
        i18n: Translator = data["i18n"]
        session_factory: async_sessionmaker[AsyncSession] = data["session_factory"]
        tg_user: User | None = data.get("event_from_user")
        chat = data.get("event_chat")
        chosen = None
        # Only what a person sent: a my_chat_member update saying they blocked the bot
        # must not reactivate them.
        from_person = isinstance(event, Update) and (event.message or event.callback_query)
        if from_person and tg_user is not None and chat is not None and chat.type == "private":
            try:
                async with session_factory() as session, session.begin():
                    user = await repo.touch_user(session, chat.id, tg_user.language_code)
                    chosen = user.language
            except SQLAlchemyError as exc:
                # Still answer: the locale falls back to Telegram's language.
                log.warning("user %s not stored: %s", chat.id, type(exc).__name__)
        locale = i18n.choose_locale(chosen, tg_user.language_code if tg_user else None)
        data["locale"] = locale
        # aiogram's `gettext` reads I18n's own context variable, which a subclass's
        # `context()` would not set.
        token = I18n.set_current(i18n)
        try:
            with i18n.use_locale(locale):
                return await handler(event, data)
        finally:
            I18n.reset_current(token)
