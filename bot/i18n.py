"""Locale choice, gettext catalogs and status-name translation.

Catalogs are compiled from `locales/<lang>/LC_MESSAGES/messages.po` in memory at
start-up, so a fresh checkout or install needs no `pybabel compile` step and a
stale `.mo` can never shadow an edited `.po`.
"""

from __future__ import annotations

import gettext
import io
from pathlib import Path

from aiogram.utils.i18n import I18n
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

from bot.config import LANGUAGES


def locales_dir() -> Path:
    """`locales/` beside the package (checkout, editable install), else in the working
    directory (non-editable install run from the repository, as in the Docker image)."""
    beside = Path(__file__).resolve().parent.parent / "locales"
    return beside if beside.is_dir() else Path.cwd() / "locales"


STATUS_CONTEXT = "status"


def N_(message: str) -> str:
    """Marks a msgid for extraction; translated where it is shown."""
    return message


def pgettext_noop(context: str, message: str) -> str:
    """Marks a msgid with a context for extraction; translated later by `status_name`."""
    return message


# Translations of Starex's `advanced` codes seen in practice or expected of a courier.
# The list only seeds the catalogs: the real dictionary is always fetched from Starex.
KNOWN_STATUSES = (
    pgettext_noop("status", "AWAITING_SYNC"),
    pgettext_noop("status", "NEW"),
    pgettext_noop("status", "PICKUP"),
    pgettext_noop("status", "DELIVERY"),
    pgettext_noop("status", "COMPLETE"),
    pgettext_noop("status", "DELIVERED"),
    pgettext_noop("status", "IN_TRANSIT"),
    pgettext_noop("status", "TRANSIT"),
    pgettext_noop("status", "SORTING"),
    pgettext_noop("status", "SORTING_CENTER"),
    pgettext_noop("status", "WAREHOUSE"),
    pgettext_noop("status", "OUT_FOR_DELIVERY"),
    pgettext_noop("status", "COURIER"),
    pgettext_noop("status", "RETURN"),
    pgettext_noop("status", "RETURNED"),
    pgettext_noop("status", "CANCEL"),
    pgettext_noop("status", "CANCELED"),
    pgettext_noop("status", "CANCELLED"),
)


class Translator(I18n):
    def __init__(self, *, path: Path | None = None, default_locale: str = "ru") -> None:
        super().__init__(path=path or locales_dir(), default_locale=default_locale)

    def find_locales(self) -> dict[str, gettext.GNUTranslations]:
        translations: dict[str, gettext.GNUTranslations] = {}
        for po_path in sorted(self.path.glob(f"*/LC_MESSAGES/{self.domain}.po")):
            with po_path.open("rb") as fp:
                catalog = read_po(fp)
            buffer = io.BytesIO()
            write_mo(buffer, catalog)
            buffer.seek(0)
            translations[po_path.parents[1].name] = gettext.GNUTranslations(buffer)
        return translations

    def choose_locale(self, chosen: str | None, language_code: str | None) -> str:
        """The user's explicit choice, else Telegram's language, else the default."""
        if chosen in LANGUAGES:
            return chosen
        return map_language_code(language_code) or self.default_locale

    def status_name(self, code: int, *, locale: str, name: str | None, advanced: str | None) -> str:
        """SPEC.md: `ru` shows Starex's own name; others the project's translation of
        `advanced`; then Starex's name; then a generic "status N"."""
        name = (name or "").strip() or None
        if locale == "ru" and name:
            return name
        if advanced:
            key = advanced.strip().upper()
            catalog = self.locales.get(locale)
            if catalog is not None:
                translated = catalog.pgettext(STATUS_CONTEXT, key)
                if translated != key:
                    return translated
        if name:
            return name
        return self.gettext("status {code}", locale=locale).format(code=code)


def map_language_code(language_code: str | None) -> str | None:
    """Telegram's IETF tag (`ru-RU`, `uz`, `uz-Cyrl`, `en-GB`) to one of ours, or None.

    `uz-Cyrl` maps to `uz`: the same language, and readers of Cyrillic Uzbek read
    the Latin script taught in schools since the 1990s.
    """
    if not language_code:
        return None
    primary = language_code.replace("_", "-").split("-", 1)[0].strip().lower()
    return primary if primary in LANGUAGES else None
