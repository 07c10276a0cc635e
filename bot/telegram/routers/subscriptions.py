from __future__ import annotations

import asyncio
import contextlib

from aiogram import F, Router
from aiogram.exceptions import TelegramBadRequest
from aiogram.filters import Command, CommandObject
from aiogram.types import CallbackQuery, InaccessibleMessage, Message
from aiogram.utils.i18n import gettext as _
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.barcodes import from_args, normalize
from bot.db import repo
from bot.db.models import Subscription
from bot.render import esc, render_status_line, split_blocks
from bot.telegram.chat_action import typing
from bot.telegram.keyboards import ParcelAction, parcel_keyboard
from bot.telegram.parcels import Parcels
from bot.telegram.texts import barcode_hint, too_many_lookups, usage

MAX_SUBSCRIPTIONS = 50
MAX_LABEL = 64


async def add_subscription(
    session_factory: async_sessionmaker[AsyncSession],
    chat_id: int,
    barcode: str,
    label: str | None = None,
) -> bool | None:
    """True when new, False when already followed, None when over the cap.

    Answers to the person are sent after the commit, never inside the transaction.
    """
    async with session_factory() as session, session.begin():
        await repo.lock_user(session, chat_id)  # two at once must not both pass the cap
        if not await repo.is_subscribed(session, chat_id, barcode) and (
            await repo.count_subscriptions(session, chat_id) >= MAX_SUBSCRIPTIONS
        ):
            return None
        return await repo.subscribe(session, chat_id, barcode, label)


async def remove_subscription(
    session_factory: async_sessionmaker[AsyncSession], chat_id: int, barcode: str
) -> bool:
    """True when it was followed. Changes queued for it are not sent any more."""
    async with session_factory() as session, session.begin():
        await repo.drop_pending_for(session, chat_id, barcode)
        return await repo.unsubscribe(session, chat_id, barcode)


async def follow(
    message: Message,
    args: str,
    parcels: Parcels,
    session_factory: async_sessionmaker[AsyncSession],
    locale: str,
) -> None:
    """Subscribe the chat and show the parcel's current status (/subscribe, deep link)."""
    barcode, label = from_args(args)  # `/subscribe AB123456789UZ Gift for mum`
    label = label[:MAX_LABEL] if label else None
    if barcode is None:
        await message.answer(barcode_hint(args.strip()))
        return
    created = await add_subscription(session_factory, message.chat.id, barcode, label)
    if created is None:
        await message.answer(
            _(
                "You already follow {count} parcels, the most I allow. "
                "Unsubscribe from delivered ones first (/list)."
            ).format(count=MAX_SUBSCRIPTIONS)
        )
        return
    if created:
        head = _("🔔 You are following {barcode}. I will write on every status change.")
    else:
        head = _("You are already following {barcode}.")
    if await parcels.may_look_up(message.chat.id):
        async with typing(message.bot, message.chat.id):
            status = await parcels.current(
                barcode,
                locale,
                label,
                missing=_(
                    "Starex does not know this barcode yet. I will write as soon as it appears."
                ),
            )
    else:  # followed all the same; the status can wait
        status = too_many_lookups()
    await message.answer(
        head.format(barcode=f"<b>{esc(barcode)}</b>") + "\n\n" + status,
        reply_markup=parcel_keyboard(barcode, subscribed=True),
    )


async def subscribe_command(
    message: Message,
    command: CommandObject,
    parcels: Parcels,
    session_factory: async_sessionmaker[AsyncSession],
    locale: str,
) -> None:
    if not command.args:
        await message.answer(usage("subscribe"))
        return
    await follow(message, command.args, parcels, session_factory, locale)


async def unsubscribe_command(
    message: Message,
    command: CommandObject,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    if not command.args:
        await message.answer(usage("unsubscribe"))
        return
    barcode, _rest = from_args(command.args)
    if barcode is None:
        await message.answer(barcode_hint(command.args.strip()))
        return
    removed = await remove_subscription(session_factory, message.chat.id, barcode)
    text = (
        _("🔕 You no longer follow {barcode}.")
        if removed
        else _("You were not following {barcode}.")
    )
    await message.answer(text.format(barcode=f"<b>{esc(barcode)}</b>"))


async def list_command(
    message: Message,
    parcels: Parcels,
    session_factory: async_sessionmaker[AsyncSession],
    locale: str,
) -> None:
    async with session_factory() as session:
        subscriptions = await repo.list_subscriptions(session, message.chat.id)
        latest = await repo.latest_events(session, [s.barcode for s in subscriptions])
    if not subscriptions:
        await message.answer(
            _("You are not following any parcels yet. Send /subscribe with a barcode.")
        )
        return
    # Stored webhooks answer at once; barcodes without any ask Starex, a few at a time,
    # unless the person is over the look-up cap.
    unknown = [s for s in subscriptions if s.barcode not in latest]
    ask_starex = await parcels.may_look_up(message.chat.id, len(unknown))
    lookups = asyncio.Semaphore(5)

    async def line(sub: Subscription) -> str:
        event = latest.get(sub.barcode)
        if event is not None:
            return await parcels.stored_status(sub.barcode, event, locale, sub.label)
        no_status = render_status_line(
            parcels.i18n, locale, barcode=sub.barcode, status=None, when=None, label=sub.label
        )
        if not ask_starex:
            return no_status
        async with lookups:
            return await parcels.current(sub.barcode, locale, sub.label, missing=no_status)

    async with typing(message.bot, message.chat.id):
        lines = await asyncio.gather(*(line(sub) for sub in subscriptions))
    blocks = [_("Parcels you follow ({count}):").format(count=len(subscriptions)), *lines]
    if not ask_starex:
        blocks.append(f"<i>{too_many_lookups()}</i>")
    for text in split_blocks(blocks):
        await message.answer(text)


async def toggle_subscription(
    query: CallbackQuery,
    callback_data: ParcelAction,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    barcode = normalize(callback_data.barcode)
    if barcode is None or query.message is None:
        await query.answer()
        return
    subscribe = callback_data.action == "sub"
    if subscribe:
        if await add_subscription(session_factory, query.message.chat.id, barcode) is None:
            await query.answer(
                _("You follow too many parcels. Unsubscribe from some first."), show_alert=True
            )
            return
    else:
        await remove_subscription(session_factory, query.message.chat.id, barcode)
    await query.answer(_("🔔 Subscribed") if subscribe else _("🔕 Unsubscribed"))
    if not isinstance(query.message, InaccessibleMessage):
        # Done and confirmed already: a message too old or gone to edit changes nothing.
        with contextlib.suppress(TelegramBadRequest):
            await query.message.edit_reply_markup(
                reply_markup=parcel_keyboard(barcode, subscribed=subscribe)
            )


def create_router() -> Router:
    router = Router(name=__name__)
    router.message.register(subscribe_command, Command("subscribe", ignore_case=True))
    router.message.register(unsubscribe_command, Command("unsubscribe", ignore_case=True))
    router.message.register(list_command, Command("list", ignore_case=True))
    router.callback_query.register(
        toggle_subscription, ParcelAction.filter(F.action.in_({"sub", "unsub"}))
    )
    return router
