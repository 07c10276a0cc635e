"""Sentences more than one router says."""

from __future__ import annotations

from aiogram.utils.i18n import gettext as _

from bot.render import esc


def barcode_hint(text: str | None = None) -> str:
    hint = _(
        "A Starex barcode has 6 to 40 Latin letters and digits, "
        "for example <code>AB123456789UZ</code>."
    )
    if not text:
        return hint
    shown = esc(text if len(text) <= 40 else text[:39] + "…")
    return _("“{text}” does not look like a barcode.").format(text=shown) + "\n" + hint


def usage(command: str) -> str:
    return _("Send the barcode after the command, for example: {example}").format(
        example=f"<code>/{command} AB123456789UZ</code>"
    )


def too_many_lookups() -> str:
    return _(
        "You have looked up many parcels in the last minute. Please wait a minute and try again."
    )
