"""Outer middleware: registers the user, picks the locale, sets the i18n context."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiogram import BaseMiddleware
from aiogram.types import TelegramObject, User
from aiogram.utils.i18n import I18n
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.db import repo
from bot.i18n import Translator

log = logging.getLogger(__name__)

Handler = Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]]


class UserMiddleware(BaseMiddleware):
    """Any message from a person means they can be reached again (reactivates a user
    who had blocked the bot) and tells us their Telegram language."""

    async def __call__(self, handler: Handler, event: TelegramObject, data: dict[str, Any]) -> Any:
        i18n: Translator = data["i18n"]
        session_factory: async_sessionmaker[AsyncSession] = data["session_factory"]
        tg_user: User | None = data.get("event_from_user")
        chat = data.get("event_chat")
        chosen = None
        if tg_user is not None and chat is not None and chat.type == "private":
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
