"""Async client for the Starex REST API (statuses dictionary and order trace)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self, TypeVar
from zoneinfo import ZoneInfo

import httpx
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from bot.starex.errors import StarexAuthError, StarexError, StarexNotFound, StarexUnavailable
from bot.starex.models import State, Trace, valid_items

logger = logging.getLogger("bot.starex")

OnRequest = Callable[[str, float, str | None], None]
"""(endpoint, seconds, error kind or None) — called after every request attempt."""

_T = TypeVar("_T")
_STATES_PATH = "api/v1/dictionaries/states"
_TRACE_PATH = "api/v1/order/trace"
_MAX_BACKOFF = 10.0


def _is_transient(exc: BaseException) -> bool:
    # No response at all (status None) or a 5xx; a GET is safe to repeat. Not once the
    # client is closed: that is the program stopping.
    return (
        isinstance(exc, StarexUnavailable)
        and exc.kind != "closed"
        and (exc.status is None or exc.status >= 500)
    )


def _short(text: str, limit: int = 100) -> str:
    return " ".join(text.split())[:limit]


def _envelope_error(error: object, status: int) -> StarexError:
    code: int | None = None
    message = ""
    if isinstance(error, dict):
        try:
            code = int(error.get("code"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            code = None
        if isinstance(error.get("message"), str):
            message = _short(error["message"])
    detail = f"Starex error {code}" + (f": {message}" if message else "")
    if code in (404, 422):
        return StarexNotFound(detail, status=status, kind="not_found")
    if code in (401, 403):
        return StarexAuthError(detail, status=status, kind="auth")
    kind = f"http_{status}" if status >= 500 else "api_error"
    return StarexUnavailable(detail, status=status, kind=kind)


def _unwrap(response: httpx.Response) -> Any:
    """Return the envelope's `data`, or raise the matching StarexError."""
    status = response.status_code
    if status in (401, 403):
        raise StarexAuthError(f"HTTP {status}", status=status, kind="auth")
    try:
        body = response.json()
    except ValueError:  # empty, HTML, bad encoding
        body = None
    # The error envelope may arrive with any HTTP status; it says more than the status.
    if isinstance(body, dict) and body.get("success") is False:
        raise _envelope_error(body.get("error"), status)
    # A 404 without the envelope is a wrong STAREX_BASE_URL or a proxy, not an unknown
    # parcel (Starex says that with its envelope): unavailable, so the stored history shows.
    if not response.is_success:
        raise StarexUnavailable(f"HTTP {status}", status=status, kind=f"http_{status}")
    if not isinstance(body, dict) or body.get("success") is not True:
        raise StarexUnavailable(
            "response is not a Starex JSON envelope", status=status, kind="bad_body"
        )
    data = body.get("data")
    if data is None:
        raise StarexNotFound("empty data", status=status, kind="not_found")
    return data


def _parse_states(data: Any) -> list[State]:
    if not isinstance(data, list):
        raise ValueError("states data is not a list")
    return valid_items(State, data)


class StarexClient:
    def __init__(
        self,
        base_url: str,
        login: str,
        password: str,
        *,
        timeout: float = 10.0,
        retries: int = 2,
        backoff: float = 0.5,
        transport: httpx.AsyncBaseTransport | None = None,
        on_request: OnRequest | None = None,
        zone: ZoneInfo | None = None,
    ) -> None:
        self._timeout = timeout
        # Trace times with an offset are moved into Starex's zone, like naive ones.
        self._context = {"zone": zone}
        self._retries = retries
        self._backoff = backoff
        self._on_request = on_request
        self._http = httpx.AsyncClient(
            base_url=str(base_url),
            auth=httpx.BasicAuth(login, password),
            headers={"Accept": "application/json"},
            timeout=httpx.Timeout(timeout, connect=min(5.0, timeout)),
            transport=transport,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def get_states(self) -> list[State]:
        try:
            return await self._get("states", _STATES_PATH, None, _parse_states)
        except StarexNotFound as exc:
            # No barcode involved here: a 404 means a wrong base URL, not an unknown parcel.
            raise StarexUnavailable(exc.detail, status=exc.status, kind=exc.kind) from None

    async def get_trace(self, barcode: str) -> Trace:
        def parse(data: Any) -> Trace:
            if not isinstance(data, dict):
                raise ValueError("trace data is not an object")
            if not data.get("barcode"):
                data = {**data, "barcode": barcode}
            return Trace.model_validate(data, context=self._context)

        return await self._get("trace", _TRACE_PATH, {"barcode": barcode}, parse)

    async def _get(
        self,
        endpoint: str,
        path: str,
        params: dict[str, str] | None,
        parse: Callable[[Any], _T],
    ) -> _T:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._retries + 1),
            wait=wait_exponential(multiplier=self._backoff, max=_MAX_BACKOFF),
            retry=retry_if_exception(_is_transient),
            reraise=True,
        )
        return await retrying(self._attempt, endpoint, path, params, parse)

    async def _attempt(
        self,
        endpoint: str,
        path: str,
        params: dict[str, str] | None,
        parse: Callable[[Any], _T],
    ) -> _T:
        started = time.perf_counter()
        try:
            result = await self._fetch(path, params, parse)
        except StarexError as exc:
            self._report(endpoint, started, exc.kind)
            # A barcode Starex does not know is a person's typo, and a look-up cut off
            # by shutdown is ours: neither is Starex failing.
            expected = isinstance(exc, StarexNotFound) or exc.kind == "closed"
            level = logging.INFO if expected else logging.WARNING
            logger.log(
                level,
                "Starex %s request failed: %s (HTTP status %s)",
                endpoint,
                exc.detail,
                exc.status,
            )
            raise
        self._report(endpoint, started, None)
        return result

    async def _fetch(
        self, path: str, params: dict[str, str] | None, parse: Callable[[Any], _T]
    ) -> _T:
        closed = StarexUnavailable("cut off: the program is stopping", kind="closed")
        if self._http.is_closed:
            raise closed
        try:
            # httpx timeouts are per read/write; this caps the whole attempt.
            async with asyncio.timeout(self._timeout):
                response = await self._http.get(path, params=params)
        except (httpx.TimeoutException, TimeoutError):
            raise StarexUnavailable("request timed out", kind="timeout") from None
        except httpx.TransportError as exc:
            if self._http.is_closed:  # aclose() while the request was under way
                raise closed from None
            raise StarexUnavailable(
                f"connection failed ({type(exc).__name__})", kind="connect"
            ) from None
        data = _unwrap(response)
        try:
            return parse(data)
        except ValueError:  # includes pydantic.ValidationError
            # `from None`: the validation error echoes payload values (recipient names).
            raise StarexUnavailable(
                "unexpected data shape", status=response.status_code, kind="bad_body"
            ) from None

    def _report(self, endpoint: str, started: float, error: str | None) -> None:
        if self._on_request is None:
            return
        try:
            self._on_request(endpoint, time.perf_counter() - started, error)
        except Exception:
            # Metrics must never break a lookup.
            logger.exception("Starex on_request callback failed")
