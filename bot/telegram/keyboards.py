from __future__ import annotations

from aiogram.filters.callback_data import CallbackData
from aiogram.types import InlineKeyboardMarkup
from aiogram.utils.i18n import gettext as _
from aiogram.utils.keyboard import InlineKeyboardBuilder

LANGUAGE_NAMES = {"ru": "🇷🇺 Русский", "uz": "🇺🇿 Oʻzbekcha", "en": "🇬🇧 English"}


class ParcelAction(CallbackData, prefix="p"):
    action: str  # sub, unsub, trace
    barcode: str


class LanguageChoice(CallbackData, prefix="lang"):
    code: str


def parcel_keyboard(barcode: str, *, subscribed: bool) -> InlineKeyboardMarkup:
    builder = InlineKeyboardBuilder()
    if subscribed:
        builder.button(
            text=_("🔕 Unsubscribe"), callback_data=ParcelAction(action="unsub", barcode=barcode)
        )
    else:
        builder.button(
            text=_("🔔 Subscribe"), callback_data=ParcelAction(action="sub", barcode=barcode)
        )
    builder.button(
        text=_("📜 Full history"), callback_data=ParcelAction(action="trace", barcode=barcode)
    )
    return builder.as_markup()


def language_keyboard() -> InlineKeyboardMarkup:
    builder = InlineKeyboardBuilder()
    for code, name in LANGUAGE_NAMES.items():
        builder.button(text=name, callback_data=LanguageChoice(code=code))
    return builder.as_markup()
