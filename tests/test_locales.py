"""Every user-facing string is translated in every language, and the catalogs are
in step with the code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po

from bot.config import LANGUAGES
from bot.i18n import KNOWN_STATUSES, Translator

ROOT = Path(__file__).resolve().parent.parent
KEYWORDS = {"_": None, "gettext": None, "N_": None, "pgettext_noop": ((1, "c"), 2)}


def code_msgids() -> set[tuple[str | None, str]]:
    found = set()
    for _file, _line, message, _comments, context in extract_from_dir(
        ROOT / "bot", keywords=KEYWORDS, comment_tags=()
    ):
        found.add((context, message))
    return found


def catalog(language: str):
    with (ROOT / "locales" / language / "LC_MESSAGES" / "messages.po").open("rb") as fp:
        return read_po(fp)


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_msgid_in_code_is_translated(language: str) -> None:
    translated = {(m.context, m.id): m.string for m in catalog(language) if m.id and not m.fuzzy}
    missing = [msgid for msgid in code_msgids() if not translated.get(msgid)]
    assert not missing, f"{language}: untranslated {missing}"


@pytest.mark.parametrize("language", LANGUAGES)
def test_translations_keep_placeholders_and_tags(language: str) -> None:
    for message in catalog(language):
        if not message.id:
            continue
        for pattern in (r"\{\w+\}", r"</?\w+>"):
            assert sorted(re.findall(pattern, message.id)) == sorted(
                re.findall(pattern, message.string)
            ), (language, message.id)


def test_status_translations_for_common_codes() -> None:
    i18n = Translator()
    for code in KNOWN_STATUSES:
        for language in ("uz", "en"):
            name = i18n.status_name(1, locale=language, name="Имя", advanced=code)
            assert name != "Имя", (language, code)


def test_uzbek_is_latin_script() -> None:
    for message in catalog("uz"):
        assert not re.search("[а-яА-ЯёЁўқғҳ]", message.string), message.id
