"""Exceptions raised by the Starex client."""

from __future__ import annotations


class StarexError(Exception):
    """Base class. `status` is the HTTP status, or None when no response arrived.

    `kind` is the short failure label also passed to the client's `on_request`
    callback ("timeout", "connect", "http_500", "auth", "not_found", ...).
    """

    def __init__(self, detail: str, *, status: int | None = None, kind: str = "error") -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status
        self.kind = kind


class StarexNotFound(StarexError):
    """Starex does not know the barcode."""


class StarexAuthError(StarexError):
    """Starex rejected the credentials."""


class StarexUnavailable(StarexError):
    """Starex could not be reached or answered something unusable."""
