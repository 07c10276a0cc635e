from __future__ import annotations

from aiogram import Router
from aiogram.types import CallbackQuery, Message
from aiogram.utils.i18n import gettext as _


async def anything_else(message: Message) -> None:
    """Unknown commands, stickers, photos: say what the bot understands."""
    await message.answer(
        _(
            "I did not understand that. Send me a barcode, for example "
            "<code>AB123456789UZ</code>, or /help."
        )
    )


async def stale_button(query: CallbackQuery) -> None:
    """A button from an old keyboard: stop the spinner, say nothing."""
    await query.answer()


def create_router() -> Router:
    router = Router(name=__name__)
    router.message.register(anything_else)
    router.callback_query.register(stale_button)
    return router
