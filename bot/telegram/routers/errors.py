from __future__ import annotations

import logging

from aiogram import Router
from aiogram.exceptions import TelegramAPIError, TelegramBadRequest, TelegramUnauthorizedError
from aiogram.types import ErrorEvent, Message
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.db import repo
from bot.i18n import Translator
from bot.telegram.failures import TELEGRAM_TROUBLE, chat_gone, describe

log = logging.getLogger(__name__)


async def on_error(
    event: ErrorEvent,
    i18n: Translator,
    session_factory: async_sessionmaker[AsyncSession],
    locale: str | None = None,
) -> bool:
    """The person gets a short apology in their language (`locale`, chosen by the user
    middleware); the operator's log gets the cause: one line for an outage we expect,
    the traceback for a bug."""
    exc = event.exception
    update_id = event.update.update_id
    message = event.update.message or (
        event.update.callback_query.message if event.update.callback_query else None
    )
    if isinstance(exc, TelegramBadRequest) and "message is not modified" in exc.message:
        return True  # a button pressed twice: nothing to change
    if isinstance(exc, TelegramUnauthorizedError):
        return True  # the token was revoked: the program stops, saying so; no apology
    if isinstance(exc, TelegramAPIError) and chat_gone(exc):
        # Blocked the bot while we answered: an apology would not reach them either.
        if message is not None:
            await _deactivate(session_factory, message.chat.id, exc.message)
        return True
    if isinstance(exc, TELEGRAM_TROUBLE):
        log.warning("update %s not answered, Telegram failed: %s", update_id, describe(exc))
    elif isinstance(exc, SQLAlchemyError | OSError):
        log.warning(
            "update %s not handled, database unavailable: %s", update_id, type(exc).__name__
        )
    else:
        log.error("update %s failed", update_id, exc_info=exc)
    if message is not None:
        await _apologise(event, message, i18n, locale)
    return True


async def _deactivate(
    session_factory: async_sessionmaker[AsyncSession], chat_id: int, reason: str
) -> None:
    log.info("chat %s unreachable (%s): marked inactive", chat_id, reason)
    try:
        async with session_factory() as session, session.begin():
            await repo.give_up_on_chat(session, chat_id, reason)
    except SQLAlchemyError as exc:  # the next notification finds out again
        log.warning("chat %s not marked inactive: %s", chat_id, type(exc).__name__)


async def _apologise(
    event: ErrorEvent, message: Message, i18n: Translator, locale: str | None
) -> None:
    if locale is None:  # the middleware did not get that far
        user = (event.update.message or event.update.callback_query).from_user
        locale = i18n.choose_locale(None, user.language_code if user else None)
    try:
        await event.update.bot.send_message(
            message.chat.id,
            i18n.gettext("Sorry, something went wrong. Please try again later.", locale=locale),
        )
    except Exception as send_error:  # the apology itself must never raise
        log.warning("apology not sent: %s", send_error)


def create_router() -> Router:
    router = Router(name=__name__)
    router.errors.register(on_error)
    return router
