from __future__ import annotations

import logging

from aiogram import Router
from aiogram.filters import Command
from aiogram.types import BotCommandScopeChat, CallbackQuery, Message
from aiogram.utils.i18n import gettext as _
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.config import LANGUAGES
from bot.db import repo
from bot.i18n import Translator
from bot.telegram.commands import bot_commands
from bot.telegram.failures import TELEGRAM_TROUBLE, describe
from bot.telegram.keyboards import LanguageChoice, language_keyboard

log = logging.getLogger(__name__)


async def language_command(message: Message) -> None:
    await message.answer(_("Choose your language:"), reply_markup=language_keyboard())


async def language_chosen(
    query: CallbackQuery,
    callback_data: LanguageChoice,
    session_factory: async_sessionmaker[AsyncSession],
    i18n: Translator,
) -> None:
    if callback_data.code not in LANGUAGES or query.message is None:
        await query.answer()
        return
    locale = callback_data.code
    async with session_factory() as session, session.begin():
        await repo.set_language(session, query.message.chat.id, locale)
    done = i18n.gettext("Language saved: English.", locale=locale)
    await query.answer(done)
    # Saved and confirmed; what follows only tidies up. Should Telegram fail it, an
    # apology (in the language just left) would tell the person it did not work.
    try:
        # The menu of this chat follows the chosen language too.
        await query.bot.set_my_commands(
            bot_commands(i18n, locale),
            scope=BotCommandScopeChat(chat_id=query.message.chat.id),
        )
        if isinstance(query.message, Message):
            await query.message.edit_text(done)
    except TELEGRAM_TROUBLE as exc:
        chat_id = query.message.chat.id
        log.warning("language of chat %s saved, menu not updated: %s", chat_id, describe(exc))


def create_router() -> Router:
    router = Router(name=__name__)
    router.message.register(language_command, Command("language", ignore_case=True))
    router.callback_query.register(language_chosen, LanguageChoice.filter())
    return router
