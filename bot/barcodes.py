"""Barcode normalisation (SPEC.md: case-insensitive after removing spaces and dashes)."""

from __future__ import annotations

import re

# Starex barcodes look like AB123456789UZ; accept any Latin letters and digits with
# at least one digit, 6..40 long, so that new series keep working.
_VALID = re.compile(r"(?=.*[0-9])[A-Z0-9]{6,40}")
_IGNORED = re.compile(r"[\s\-\u2010-\u2015]+")  # spaces and dashes of every kind
_SEPARATORS = re.compile(r"[\s,;]+")
# Punctuation people put around a barcode in a sentence: "AB123456789UZ?", «…», (…).
_AROUND = ".,;:!?()[]{}<>«»\"'`“”„‘’"
# One group of a barcode typed in pieces: digits in it, or a 2-3 letter prefix/suffix.
_GROUP = re.compile(r"[A-Za-z0-9-]*[0-9][A-Za-z0-9-]*|[A-Za-z]{1,3}")


def normalize(text: str) -> str | None:
    """One barcode as typed (spaces and dashes allowed) -> canonical form, or None."""
    candidate = _IGNORED.sub("", text)
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
    if all(_GROUP.fullmatch(word) for word in words):
        whole = normalize("".join(words))
        if whole is not None:
            return whole, None
    rest = " ".join(words[1:]) or None
    return normalize(words[0].strip(_AROUND)), rest


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
