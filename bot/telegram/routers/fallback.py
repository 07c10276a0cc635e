from __future__ import annotations

from aiogram import Router
from aiogram.types import Message
from aiogram.utils.i18n import gettext as _


async def anything_else(message: Message) -> None:
    """Unknown commands, stickers, photos: say what the bot understands."""
    await message.answer(
        _(
            "I did not understand that. Send me a barcode, for example "
            "<code>AB123456789UZ</code>, or /help."
        )
    )


def create_router() -> Router:
    router = Router(name=__name__)
    router.message.register(anything_else)
    return router
