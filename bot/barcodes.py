"""Barcode normalisation (SPEC.md: case-insensitive after removing spaces and dashes)."""

from __future__ import annotations

import re

# Starex barcodes look like AB123456789UZ; accept any Latin letters and digits with
# at least one digit, 6..40 long, so that new series keep working.
_VALID = re.compile(r"(?=.*[0-9])[A-Z0-9]{6,40}")
# Spaces, hyphens and en dashes, and the invisible characters copy-paste brings along
# (zero-width space and joiners, word joiner, BOM).
_IGNORED = re.compile(r"[\s\-\u2010-\u2013\u200b-\u200d\u2060\ufeff]+")
# On a Russian keyboard layout "АВ123456789UZ" looks right and is Cyrillic: read the
# letters that look the same as the Latin ones they look like.
_LOOK_ALIKES = str.maketrans("АВЕКМНОРСТУХавекмнорстух", "ABEKMHOPCTYXABEKMHOPCTYX")
# Between barcodes in a message; also what people write around one ("№:AB…", "#AB…").
# An em dash or a horizontal bar is a separator too ("AB…UZ—CD…UZ"), not a hyphen.
_SEPARATORS = re.compile(r"[\s,;:/#№\u2014\u2015]+")
# Punctuation people put around a barcode in a sentence: "AB123456789UZ?", «…», (…).
_AROUND = ".,;:!?…()[]{}<>«»\"'`“”„‘’"
# A barcode typed in pieces (`AB 123456789 UZ`, `AB 1234 5678 9UZ`): groups with digits
# in them, shorter than a whole barcode, and a 1-3 letter prefix or suffix.
_GROUP = re.compile(r"(?=.*[0-9])[A-Za-z0-9]{1,9}")
_AFFIX = re.compile(r"[A-Za-z]{1,3}")
# A first word this long that is a barcode by itself is the whole barcode, and a short
# word after it is a word (`AB123456789UZ pls`), not a suffix.
_WHOLE = 10


def _clean(text: str) -> str:
    return _IGNORED.sub("", text).translate(_LOOK_ALIKES)


def normalize(text: str) -> str | None:
    """One barcode as typed (spaces and dashes allowed) -> canonical form, or None."""
    candidate = _clean(text)
    # isascii first: upper() turns some letters into ASCII ones ("ﬀ" -> "FF").
    if not candidate.isascii():
        return None
    candidate = candidate.upper()
    return candidate if _VALID.fullmatch(candidate) else None


def from_args(args: str) -> tuple[str | None, str | None]:
    """A command's arguments -> (barcode, the words after it).

    `AB 1234 5678 UZ` and `ab-1234 5678-9uz` are one barcode typed in groups: every
    word is a short group of letters and digits. Otherwise the first word is the
    barcode and the rest are words (`AB123456789UZ please`, a label).
    """
    words = args.split()
    if not words:
        return None, None
    # The longest run of pieces from the start; words after it are a label, provided
    # the pieces make a whole barcode (`/subscribe AB 123456789 UZ Gift`).
    for end in range(len(words), 1, -1):
        pieces = words[:end]
        whole = normalize("".join(pieces)) if _in_pieces(pieces) else None
        if whole is None or not _ends_a_barcode(pieces[-1]):
            continue
        if end == len(words) or len(whole) >= _WHOLE:
            return whole, " ".join(words[end:]) or None
    rest = " ".join(words[1:]) or None
    return normalize(words[0].strip(_AROUND)), rest


def _ends_a_barcode(piece: str) -> bool:
    """A last piece has digits (`9UZ`) or is a two-letter suffix (`UZ`); a longer word
    (`pls`, `mum`) is a word after the barcode."""
    piece = _clean(piece)
    return any(ch.isdigit() for ch in piece) or (len(piece) == 2 and piece.isalpha())


def _in_pieces(words: list[str]) -> bool:
    groups = [_clean(word) for word in words]
    first = normalize(groups[0])
    if first is not None and len(first) >= _WHOLE:
        return False
    ends = (groups[0], groups[-1])
    return all(_GROUP.fullmatch(g) for g in groups[1:-1]) and all(
        _GROUP.fullmatch(g) or _AFFIX.fullmatch(g) for g in ends
    )


def split_barcodes(text: str) -> tuple[list[str], list[str]]:
    """A message with barcodes separated by spaces, commas or new lines.

    Returns (valid barcodes in order without repeats, rejected tokens that look like
    an attempt at a barcode: words without a digit are just words).
    """
    valid: list[str] = []
    rejected: list[str] = []
    for token in _SEPARATORS.split(text):
        token = token.strip(_AROUND)
        if not token:
            continue
        barcode = normalize(token)
        if barcode is not None:
            if barcode not in valid:
                valid.append(barcode)
        elif any(ch.isdigit() for ch in token):
            rejected.append(token)
    return valid, rejected
