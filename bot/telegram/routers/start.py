from __future__ import annotations

from aiogram import Router
from aiogram.filters import Command, CommandObject, CommandStart
from aiogram.types import Message
from aiogram.utils.i18n import gettext as _
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.telegram.commands import COMMANDS
from bot.telegram.parcels import Parcels
from bot.telegram.routers.subscriptions import follow


async def start_with_barcode(
    message: Message,
    command: CommandObject,
    parcels: Parcels,
    session_factory: async_sessionmaker[AsyncSession],
    locale: str,
) -> None:
    await follow(message, command.args or "", parcels, session_factory, locale)


async def start(message: Message) -> None:
    await message.answer(
        _(
            "Hello! I follow Starex parcels for you.\n\n"
            "Send me a barcode, for example <code>AB123456789UZ</code>, to see where the "
            "parcel is. Subscribe to it and I will write to you on every status change.\n\n"
            "/help lists all commands."
        )
    )


async def help_(message: Message) -> None:
    lines = [_("What I can do:"), ""]
    lines += [f"/{name} — {_(text)}" for name, text in COMMANDS]
    lines += ["", _("You can also just send one or more barcodes.")]
    await message.answer("\n".join(lines))


def create_router() -> Router:
    router = Router(name=__name__)
    router.message.register(start_with_barcode, CommandStart(deep_link=True, ignore_case=True))
    router.message.register(start, CommandStart(ignore_case=True))
    router.message.register(help_, Command("help", ignore_case=True))
    return router
