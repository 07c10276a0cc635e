from __future__ import annotations

import logging

from aiogram import Router
from aiogram.exceptions import TelegramBadRequest, TelegramUnauthorizedError
from aiogram.types import ErrorEvent
from sqlalchemy.exc import SQLAlchemyError

from bot.i18n import Translator

log = logging.getLogger(__name__)


async def on_error(event: ErrorEvent, i18n: Translator, locale: str | None = None) -> bool:
    """The person gets a short apology in their language (`locale`, chosen by the user
    middleware); the operator's log gets the cause: one line for an outage we expect,
    the traceback for a bug."""
    exc = event.exception
    if isinstance(exc, TelegramBadRequest) and "message is not modified" in exc.message:
        return True  # a button pressed twice: nothing to change
    if isinstance(exc, TelegramUnauthorizedError):
        return True  # the token was revoked: the program stops, saying so; no apology
    if isinstance(exc, SQLAlchemyError | OSError):
        log.warning(
            "update %s not handled, database unavailable: %s",
            event.update.update_id,
            type(exc).__name__,
        )
    else:
        log.error("update %s failed", event.update.update_id, exc_info=exc)
    message = event.update.message or (
        event.update.callback_query.message if event.update.callback_query else None
    )
    if message is not None:
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
    return True


def create_router() -> Router:
    router = Router(name=__name__)
    router.errors.register(on_error)
    return router
