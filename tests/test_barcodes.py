"""Command arguments: a barcode typed in pieces, or a barcode followed by words."""

from __future__ import annotations

import pytest

from bot.barcodes import from_args, split_barcodes


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ("AB123456789UZ for mum", ("AB123456789UZ", "for mum")),
        ("AB123456789UZ pls", ("AB123456789UZ", "pls")),
        ("ab123456789uz now", ("AB123456789UZ", "now")),
        ("AB123456789UZ CD123456789UZ", ("AB123456789UZ", "CD123456789UZ")),
        ("AB 123456789 UZ", ("AB123456789UZ", None)),
        ("AB-1234-5678-9UZ", ("AB123456789UZ", None)),
        ("AB 1234-5678 9 UZ", ("AB123456789UZ", None)),
        ("1234 5678 9012", ("123456789012", None)),
        ("AB 1234 for mum", (None, "1234 for mum")),  # words inside are not pieces
        ("AB1234 5678 9UZ", ("AB123456789UZ", None)),
        ("АВ 123456789 UZ", ("AB123456789UZ", None)),  # Cyrillic А and В
        ("AB 123456789 UZ Gift", ("AB123456789UZ", "Gift")),  # pieces, then a label
        ("AB 123456789 UZ for mum", ("AB123456789UZ", "for mum")),
        ("AB 1234 5678 9UZ pls", ("AB123456789UZ", "pls")),
        ("1234 5678 9012 mum", ("123456789012", "mum")),
        ("AB 1234", ("AB1234", None)),  # short, but nothing follows: still pieces
        ("АВ123456789UZ для мамы", ("AB123456789UZ", "для мамы")),
    ],
)
def test_pieces_are_short_groups_words_are_words(
    args: str, expected: tuple[str | None, str | None]
) -> None:
    assert from_args(args) == expected


@pytest.mark.parametrize(
    "text",
    [
        "#AB123456789UZ",
        "номер:AB123456789UZ",
        "AB123456789UZ/CD987654321UZ",
        "№ AB123456789UZ",
        "AB123456789UZ—CD987654321UZ",  # an em dash between two
        "AB123456789UZ…",
    ],
)
def test_what_people_write_around_a_barcode_is_not_part_of_it(text: str) -> None:
    found, rejected = split_barcodes(text)
    assert found[0] == "AB123456789UZ" and not rejected
