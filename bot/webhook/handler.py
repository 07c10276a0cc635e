"""POST /starex/webhook[/<secret>]: validate, store the event and queue its
notifications in one transaction, and answer 200 only after the commit."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from zoneinfo import ZoneInfo

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.db import repo
from bot.db.engine import check_sqlite_file
from bot.metrics import Metrics
from bot.webhook.payload import MAX_BODY, BadPayload, parse_event

log = logging.getLogger(__name__)


class StarexWebhook:
    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        *,
        zone: ZoneInfo,
        metrics: Metrics,
        secret: str | None,
        on_queued: Callable[[], None],
        on_state: Callable[[int], None],
    ) -> None:
        self._session_factory = session_factory
        self._zone = zone
        self._metrics = metrics
        self._secret = secret.encode() if secret else None
        self._on_queued = on_queued
        self._on_state = on_state

    def routes(self) -> list[web.RouteDef]:
        if self._secret is None:
            return [web.post("/starex/webhook", self.handle)]
        return [web.post("/starex/webhook/{secret}", self.handle)]

    def _reject(self, status: int, reason: str, message: str) -> web.Response:
        self._metrics.webhooks_rejected.labels(reason).inc()
        return web.json_response({"ok": False, "error": message}, status=status)

    async def handle(self, request: web.Request) -> web.Response:
        if self._secret is not None:
            given = request.match_info.get("secret", "").encode()
            if not hmac.compare_digest(given, self._secret):
                return self._reject(404, "secret", "not found")
        if request.content_length is not None and request.content_length > MAX_BODY:
            return self._reject(413, "too_large", "body is larger than 64 KiB")
        # The whole body, however it arrives (pieces, chunked), never more than the limit.
        body = bytearray()
        try:
            async for chunk in request.content.iter_any():
                body += chunk
                if len(body) > MAX_BODY:
                    return self._reject(413, "too_large", "body is larger than 64 KiB")
        except RequestPayloadError:  # e.g. Content-Encoding: gzip over bytes that are not
            return self._reject(400, "invalid", "body cannot be decoded (Content-Encoding?)")
        except ConnectionError:  # the sender left mid-body; nobody reads this answer
            return self._reject(400, "incomplete", "body incomplete: connection lost")

        try:
            event = parse_event(bytes(body), self._zone)
        except BadPayload as exc:
            log.debug("webhook rejected: %s", exc)
            return self._reject(400, "invalid", str(exc))

        try:
            async with self._session_factory() as session, session.begin():
                result = await repo.record_event(
                    session, event.barcode, event.state, event.statetime
                )
                # A deleted SQLite file still takes writes, lost at restart: no 200 for it.
                await check_sqlite_file(session)
        except (SQLAlchemyError, OSError) as exc:
            log.warning("webhook not stored, answering 503: %s", type(exc).__name__)
            return self._reject(503, "storage", "storage unavailable, retry later")

        outcome = "duplicate" if result.duplicate else "stale" if result.stale else "stored"
        self._metrics.webhooks_received.labels(outcome).inc()
        log.info(
            "webhook %s: %s state=%d queued=%d",
            outcome,
            event.barcode,
            event.state,
            result.queued,
        )
        if result.queued:
            self._on_queued()
        self._on_state(event.state)
        return web.json_response({"ok": True, "outcome": outcome})
