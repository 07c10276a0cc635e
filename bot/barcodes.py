"""Barcode normalisation (SPEC.md: case-insensitive after removing spaces and dashes)."""

from __future__ import annotations

import re

# Starex barcodes look like AB123456789UZ; accept any latin letters and digits with
# at least one digit, 6..40 long, so that new series keep working.
_VALID = re.compile(r"^(?=.*\d)[A-Z0-9]{6,40}$")
_SEPARATORS = re.compile(r"[\s,;]+")
_IGNORED = str.maketrans("", "", " -\u2010\u2011\u2012\u2013\u2014\t")


def normalize(text: str) -> str | None:
    """One barcode as typed (spaces and dashes allowed) -> canonical form, or None."""
    candidate = text.translate(_IGNORED).upper()
    return candidate if _VALID.match(candidate) else None


def split_barcodes(text: str) -> tuple[list[str], list[str]]:
    """A message with barcodes separated by spaces, commas or new lines.

    Returns (valid barcodes in order without repeats, rejected tokens).
    """
    valid: list[str] = []
    rejected: list[str] = []
    for token in _SEPARATORS.split(text):
        if not token:
            continue
        barcode = normalize(token)
        if barcode is None:
            rejected.append(token)
        elif barcode not in valid:
            valid.append(barcode)
    return valid, rejected
