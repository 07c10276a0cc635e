from __future__ import annotations

import asyncio

from aiogram import F, Router
from aiogram.filters import Command, CommandObject
from aiogram.types import CallbackQuery, Message
from aiogram.utils.i18n import gettext as _
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.barcodes import from_args, normalize, split_barcodes
from bot.db import repo
from bot.telegram.chat_action import typing
from bot.telegram.keyboards import ParcelAction, parcel_keyboard
from bot.telegram.parcels import Parcels
from bot.telegram.texts import barcode_hint, too_many_lookups, usage

MAX_BARCODES_PER_MESSAGE = 10


async def send_history(message: Message, parcels: Parcels, barcode: str, locale: str) -> None:
    if not await parcels.may_look_up(message.chat.id):
        await message.answer(too_many_lookups())
        return
    async with typing(message.bot, message.chat.id):
        texts = await parcels.history(barcode, locale)
    for text in texts:
        await message.answer(text)


async def track_command(
    message: Message, command: CommandObject, parcels: Parcels, locale: str
) -> None:
    if not command.args:
        await message.answer(usage("track"))
        return
    barcode, _rest = from_args(command.args)
    if barcode is None:
        await message.answer(barcode_hint(command.args.strip()))
        return
    await send_history(message, parcels, barcode, locale)


async def trace_button(
    query: CallbackQuery, callback_data: ParcelAction, parcels: Parcels, locale: str
) -> None:
    await query.answer()  # at once: the Starex look-up may take seconds
    barcode = normalize(callback_data.barcode)
    if barcode is not None and isinstance(query.message, Message):
        await send_history(query.message, parcels, barcode, locale)


async def barcodes_in_text(
    message: Message,
    parcels: Parcels,
    session_factory: async_sessionmaker[AsyncSession],
    locale: str,
) -> None:
    # A shop often sends a photo of the label with the barcode typed as its caption.
    barcodes, rejected = split_barcodes(message.text or message.caption or "")
    if not barcodes:
        await message.answer(barcode_hint(rejected[0] if len(rejected) == 1 else None))
        return
    shown = barcodes[:MAX_BARCODES_PER_MESSAGE]
    if not await parcels.may_look_up(message.chat.id, len(shown)):
        await message.answer(too_many_lookups())
        return
    async with session_factory() as session:
        followed = {s.barcode for s in await repo.list_subscriptions(session, message.chat.id)}
    async with typing(message.bot, message.chat.id):
        statuses = await asyncio.gather(*(parcels.current(b, locale) for b in shown))
    for barcode, status in zip(shown, statuses, strict=True):
        await message.answer(
            status, reply_markup=parcel_keyboard(barcode, subscribed=barcode in followed)
        )
    if len(barcodes) > len(shown):
        await message.answer(
            _("I looked up the first {count} barcodes; send the rest in another message.").format(
                count=MAX_BARCODES_PER_MESSAGE
            )
        )
    for token in rejected[:3]:
        await message.answer(barcode_hint(token))


def create_router() -> Router:
    router = Router(name=__name__)
    router.message.register(track_command, Command("track", ignore_case=True))
    router.callback_query.register(trace_button, ParcelAction.filter(F.action == "trace"))
    router.message.register(barcodes_in_text, F.text, ~F.text.startswith("/"))
    router.message.register(barcodes_in_text, F.caption, ~F.caption.startswith("/"))
    return router
