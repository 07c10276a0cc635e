from __future__ import annotations

import logging

from aiogram import Router
from aiogram.exceptions import TelegramBadRequest
from aiogram.types import ErrorEvent

from bot.i18n import Translator

log = logging.getLogger(__name__)


async def on_error(event: ErrorEvent, i18n: Translator) -> bool:
    """The person gets a short apology; the traceback goes to the operator's log only."""
    exc = event.exception
    if isinstance(exc, TelegramBadRequest) and "message is not modified" in exc.message:
        return True  # a button pressed twice: nothing to change
    log.error("update %s failed", event.update.update_id, exc_info=exc)
    message = event.update.message or (
        event.update.callback_query.message if event.update.callback_query else None
    )
    if message is not None:
        user = message.from_user if event.update.message else event.update.callback_query.from_user
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
