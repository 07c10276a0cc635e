"""The command list: shown by /help and set as the bot's menu in every language."""

from __future__ import annotations

from aiogram import Bot
from aiogram.types import BotCommand

from bot.config import LANGUAGES
from bot.i18n import N_, Translator

COMMANDS = (
    ("start", N_("Welcome and how-to")),
    ("track", N_("Full history of a parcel")),
    ("subscribe", N_("Follow a parcel")),
    ("unsubscribe", N_("Stop following a parcel")),
    ("list", N_("Parcels you follow")),
    ("language", N_("Choose the language")),
    ("help", N_("List of commands")),
)


def bot_commands(i18n: Translator, locale: str) -> list[BotCommand]:
    return [
        BotCommand(command=name, description=i18n.gettext(text, locale=locale))
        for name, text in COMMANDS
    ]


async def set_bot_commands(bot: Bot, i18n: Translator) -> None:
    await bot.set_my_commands(bot_commands(i18n, i18n.default_locale))
    for locale in LANGUAGES:
        await bot.set_my_commands(bot_commands(i18n, locale), language_code=locale)
