from __future__ import annotations

from aiogram import Router
from aiogram.filters import Command
from aiogram.types import Message
from aiogram.utils.i18n import gettext as _
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.config import Settings
from bot.db import repo
from bot.i18n import N_

LABELS = {
    "users": N_("Users"),
    "active_users": N_("Active users (not blocked)"),
    "subscriptions": N_("Subscriptions"),
    "events": N_("Status changes received"),
    "pending_notifications": N_("Notifications waiting"),
    "failed_notifications": N_("Notifications not delivered (blocked, or given up)"),
}


def is_admin(message: Message, settings: Settings) -> bool:
    # Others fall through to the fallback router, as for any unknown command.
    return message.from_user is not None and message.from_user.id in settings.admin_ids


async def stats(message: Message, session_factory: async_sessionmaker[AsyncSession]) -> None:
    async with session_factory() as session:
        figures = await repo.stats(session)
    lines = [_("Statistics:")] + [f"{_(LABELS[name])}: {value}" for name, value in figures.items()]
    await message.answer("\n".join(lines))


def create_router() -> Router:
    router = Router(name=__name__)
    router.message.register(stats, Command("stats", ignore_case=True), is_admin)
    return router
