"""Composition: builds every long-lived object from Settings and runs them together."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import httpx
from aiogram import Bot, Dispatcher
from aiogram.client.default import DefaultBotProperties
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.session.middlewares.base import (
    BaseRequestMiddleware,
    NextRequestMiddlewareType,
)
from aiogram.client.telegram import TelegramAPIServer
from aiogram.enums import ParseMode
from aiogram.exceptions import (
    ClientDecodeError,
    TelegramAPIError,
    TelegramNotFound,
    TelegramRetryAfter,
    TelegramUnauthorizedError,
)
from aiogram.methods import Response, TelegramMethod
from aiogram.types import Update
from aiogram.webhook.aiohttp_server import SimpleRequestHandler
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from bot.config import ConfigError, Settings
from bot.db.engine import create_engine, create_session_factory, ping, upgrade_database
from bot.i18n import Translator
from bot.metrics import Metrics
from bot.notify.dispatcher import Notifier
from bot.starex import StarexClient
from bot.states import StateCatalog
from bot.telegram.commands import set_bot_commands
from bot.telegram.failures import TELEGRAM_TROUBLE, WaitOutFloodControl, describe
from bot.telegram.middlewares import UpdatesInFlight, UserMiddleware
from bot.telegram.parcels import LookupCap, Parcels
from bot.telegram.routers import build_router
from bot.webhook.handler import StarexWebhook

log = logging.getLogger(__name__)

TELEGRAM_WEBHOOK_PATH = "/telegram/webhook"
SHUTDOWN_GRACE = 5.0
# For webhooks in flight at shutdown (a commit takes milliseconds); a client stalled
# mid-body is cut off after it, gets no 200, and Starex sends it again.
WEBHOOK_GRACE = 2.0
STAREX_GRACE = 2.0  # of SHUTDOWN_GRACE, for look-ups under way; see _settle()
TELEGRAM_SETUP_TIMEOUT = 15.0


class TokenWatch(BaseRequestMiddleware):
    """Notices Telegram refusing the token mid-run (revoked in @BotFather): from then
    on nothing works, so the program stops rather than running deaf."""

    def __init__(self) -> None:
        self.refused = asyncio.Event()

    async def __call__(
        self, make_request: NextRequestMiddlewareType[Any], bot: Bot, method: TelegramMethod[Any]
    ) -> Response[Any]:
        try:
            return await make_request(bot, method)
        except TelegramUnauthorizedError:
            self.refused.set()
            raise


@dataclass
class App:
    settings: Settings
    engine: AsyncEngine
    session_factory: async_sessionmaker[AsyncSession]
    starex: StarexClient
    i18n: Translator
    metrics: Metrics
    catalog: StateCatalog
    bot: Bot
    dp: Dispatcher
    notifier: Notifier
    parcels: Parcels
    updates: UpdatesInFlight
    token_watch: TokenWatch
    web: web.Application
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    @property
    def polling(self) -> bool:
        return self.settings.telegram_webhook_url is None


def telegram_secret_token(settings: Settings) -> str:
    """Secret Telegram echoes in X-Telegram-Bot-Api-Secret-Token; derived, never configured."""
    digest = hashlib.sha256(b"telegram-webhook:" + settings.bot_token.get_secret_value().encode())
    return digest.hexdigest()


class TelegramWebhook(SimpleRequestHandler):
    """aiogram's handler, except that a body that is not an update gets a 400 instead of
    aiogram's 500 (or a traceback from its background task). Only a holder of the
    secret token gets this far; aiohttp keeps the body, so aiogram reads it again."""

    async def handle(self, request: web.Request) -> web.Response:
        secret = request.headers.get("X-Telegram-Bot-Api-Secret-Token", "")
        if self.verify_secret(secret, self.bot):
            try:
                Update.model_validate(await request.json(), context={"bot": self.bot})
            # Not JSON, not UTF-8, not an Update, nested past the parser, an encoding
            # that does not decode, or the sender gone mid-body.
            except (ValueError, RecursionError, RequestPayloadError, ConnectionError):
                return web.Response(status=400, text="not a Telegram update")
        return await super().handle(request)


def create_app(
    settings: Settings,
    *,
    starex_transport: httpx.AsyncBaseTransport | None = None,
    starex_timeout: float = 10.0,
    notifier_options: dict[str, Any] | None = None,
    catalog_options: dict[str, Any] | None = None,
) -> App:
    engine = create_engine(settings.database_url)
    session_factory = create_session_factory(engine)
    metrics = Metrics()
    starex = StarexClient(
        str(settings.starex_base_url),
        settings.starex_login,
        settings.starex_password.get_secret_value(),
        # One retry: a person waits for look-ups, and Starex retries its webhooks anyway.
        retries=1,
        timeout=starex_timeout,
        transport=starex_transport,
        on_request=metrics.observe_starex,
        zone=settings.zone,
    )
    i18n = Translator(default_locale=settings.default_language)
    catalog = StateCatalog(session_factory, starex, **(catalog_options or {}))
    token_watch = TokenWatch()
    # Two sessions: answers to people wait out Telegram's retry_after on the spot, the
    # dispatcher instead reschedules the row and goes on with other chats.
    bot = _make_bot(settings, token_watch, WaitOutFloodControl())
    notifier = Notifier(
        _make_bot(settings, token_watch),
        session_factory,
        i18n=i18n,
        catalog=catalog,
        zone=settings.zone,
        metrics=metrics,
        **(notifier_options or {}),
    )
    redis_url = settings.redis_url.get_secret_value() if settings.redis_url else None
    parcels = Parcels(
        starex, catalog, i18n, session_factory, settings.zone, cap=LookupCap(redis_url)
    )
    dp = Dispatcher(
        settings=settings,
        session_factory=session_factory,
        i18n=i18n,
        parcels=parcels,
    )
    updates = UpdatesInFlight()
    dp.update.outer_middleware(updates)
    dp.update.outer_middleware(UserMiddleware())
    dp.include_router(build_router())

    def queue_state_check(code: int) -> None:
        if catalog.get(code) is None:
            spawn(app, catalog.ensure(code))

    starex_webhook = StarexWebhook(
        session_factory,
        zone=settings.zone,
        metrics=metrics,
        secret=(
            settings.starex_webhook_secret.get_secret_value()
            if settings.starex_webhook_secret
            else None
        ),
        on_queued=notifier.wake,
        on_state=queue_state_check,
    )

    async def healthz(_: web.Request) -> web.Response:
        if await ping(engine):
            return web.json_response({"status": "ok"})
        return web.json_response({"status": "database unavailable"}, status=503)

    async def metrics_view(_: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": metrics.content_type})

    _quiet_malformed_requests()
    web_app = web.Application()
    web_app.add_routes(
        [*starex_webhook.routes(), web.get("/healthz", healthz), web.get("/metrics", metrics_view)]
    )
    if settings.telegram_webhook_url is not None:
        TelegramWebhook(
            dispatcher=dp, bot=bot, secret_token=telegram_secret_token(settings)
        ).register(web_app, path=TELEGRAM_WEBHOOK_PATH)

    app = App(
        settings=settings,
        engine=engine,
        session_factory=session_factory,
        starex=starex,
        i18n=i18n,
        metrics=metrics,
        catalog=catalog,
        bot=bot,
        dp=dp,
        notifier=notifier,
        parcels=parcels,
        updates=updates,
        token_watch=token_watch,
        web=web_app,
    )
    return app


def _make_bot(settings: Settings, *middlewares: BaseRequestMiddleware) -> Bot:
    api = TelegramAPIServer.from_base(str(settings.telegram_api_url).rstrip("/"))
    bot = Bot(
        settings.bot_token.get_secret_value(),
        session=AiohttpSession(api=api),
        default=DefaultBotProperties(parse_mode=ParseMode.HTML),
    )
    for middleware in middlewares:
        bot.session.middleware(middleware)
    return bot


def spawn(app: App, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
    """Background work with a kept reference, cancelled at shutdown."""
    task = asyncio.create_task(coro)
    app.tasks.add(task)
    task.add_done_callback(_forget)
    task.add_done_callback(app.tasks.discard)
    return task


def _forget(task: asyncio.Task[Any]) -> None:
    """A background task that died is reported when it dies, not at interpreter exit."""
    error = None if task.cancelled() else task.exception()
    if error is not None and not isinstance(error, ConfigError):  # run() reports those
        log.error("background task failed", exc_info=error)


class RedactingAccessLogger(AbstractAccessLogger):
    """aiohttp's access log, minus the webhook secret carried in the path."""

    _SECRET_PATH = re.compile(r"^(/starex/webhook/)[^/?]+")

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        path = self._SECRET_PATH.sub(r"\1***", request.path)
        self.logger.info("%s %s %s %.3fs", request.method, path, response.status, time)


class MalformedRequestsQuiet(logging.Filter):
    """aiohttp logs a request it cannot parse (a header over 8 KiB, a Content-Encoding
    it does not know or cannot decode) at ERROR with a traceback. From the internet
    that is expected, and anyone could fill the log with it: one DEBUG line instead.
    The client got its 400 either way."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError | RequestPayloadError):
            log.debug("malformed HTTP request refused: %s", " ".join(str(error).split()))
            return False
        return True


def _quiet_malformed_requests() -> None:
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedRequestsQuiet) for f in server_log.filters):
        server_log.addFilter(MalformedRequestsQuiet())


TOKEN_REFUSED = "BOT_TOKEN was refused by Telegram (401 Unauthorized): check the token"


def _not_bot_api(app: App, exc: TelegramAPIError) -> ConfigError:
    # A well-formed but wrong token gets 401 from Telegram, never 404 or 403: the URL is
    # wrong (or points at something that is not the Bot API).
    return ConfigError(
        f"TELEGRAM_API_URL {app.settings.telegram_api_url} refused the bot "
        f"({describe(exc)}): is it a Bot API server?"
    )


async def _prepare_telegram(app: App) -> None:
    """Menus and webhook registration; Telegram being down must not stop start-up,
    a token it refuses must."""
    try:
        async with asyncio.timeout(TELEGRAM_SETUP_TIMEOUT):
            await set_bot_commands(app.bot, app.i18n)
            if app.polling:
                await app.bot.delete_webhook(drop_pending_updates=False)
            else:
                base = str(app.settings.telegram_webhook_url).rstrip("/")
                await app.bot.set_webhook(
                    base + TELEGRAM_WEBHOOK_PATH,
                    secret_token=telegram_secret_token(app.settings),
                    allowed_updates=app.dp.resolve_used_update_types(),
                )
    except TelegramUnauthorizedError:
        raise ConfigError(TOKEN_REFUSED) from None
    except TelegramNotFound as exc:
        raise _not_bot_api(app, exc) from None
    except (TelegramAPIError, ClientDecodeError, TimeoutError) as exc:
        reason = "timeout" if isinstance(exc, TimeoutError) else describe(exc)
        log.warning("Telegram set-up incomplete (%s); the bot goes on", reason)


async def _poll(app: App) -> None:
    """Long polling. aiogram asks getMe once, unguarded, before its own retry loop;
    ask first, until Telegram answers, so an outage at start-up is survived."""
    delay = 1.0
    while True:
        try:
            await app.bot.me()  # cached by aiogram once it succeeds
            break
        except TelegramUnauthorizedError:
            raise ConfigError(TOKEN_REFUSED) from None
        except TELEGRAM_TROUBLE as exc:
            wait = exc.retry_after if isinstance(exc, TelegramRetryAfter) else delay
            log.warning(
                "Telegram unreachable at TELEGRAM_API_URL %s (%s); retrying in %.0f s",
                app.settings.telegram_api_url,
                describe(exc),
                wait,
            )
            await asyncio.sleep(wait)
            delay = min(delay * 2, 60.0)
        except TelegramAPIError as exc:  # 404, 403, 400, a teapot: nothing will work
            raise _not_bot_api(app, exc) from None
    await app.dp.start_polling(
        app.bot,
        handle_signals=False,
        close_bot_session=False,
        allowed_updates=app.dp.resolve_used_update_types(),
    )


async def _refresh_states(app: App) -> None:
    if not await app.catalog.refresh():
        log.warning("using %d cached status names; retrying Starex", len(app.catalog))
    await app.catalog.keep_fresh()


async def run(app: App, stop: asyncio.Event) -> None:
    """Migrate, start everything, wait for `stop`, then shut down in order.

    Raises ConfigError when Telegram refuses the token: nothing would ever work.
    """
    settings = app.settings
    if settings.starex_webhook_secret is None:
        log.warning(
            "STAREX_WEBHOOK_SECRET is not set: the webhook at /starex/webhook accepts anyone"
        )
    await upgrade_database(app.engine)
    await app.catalog.load_cached()

    runner = web.AppRunner(
        app.web,
        access_log_class=RedactingAccessLogger,
        handle_signals=False,
        shutdown_timeout=WEBHOOK_GRACE,
    )
    await runner.setup()
    notifier_task = polling_task = None
    try:
        await web.TCPSite(runner, settings.host, settings.port).start()
        log.info("web server listening on %s:%s", settings.host, settings.port)
        # The cached dictionary serves meanwhile; names are looked up when rendering.
        spawn(app, _refresh_states(app))
        await _prepare_telegram(app)
        notifier_task = spawn(app, app.notifier.run())
        polling_task = spawn(app, _poll(app)) if app.polling else None
        log.info("starex-bot started (%s)", "long polling" if app.polling else "Telegram webhook")
        stopping = asyncio.ensure_future(stop.wait())
        refused = asyncio.ensure_future(app.token_watch.refused.wait())
        watched = {stopping, refused} if polling_task is None else {stopping, refused, polling_task}
        try:
            await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            refused.cancel()
    finally:
        log.info("shutting down")
        app.notifier.stop()
        if polling_task is not None and not polling_task.done():
            with contextlib.suppress(RuntimeError):  # polling may not have started yet
                await app.dp.stop_polling()
        await runner.cleanup()  # stop taking webhooks; in-flight requests finish
        await _settle(app, notifier_task)
        await close(app)
    if polling_task is not None and polling_task.done() and not polling_task.cancelled():
        polling_task.result()  # a refused token: raise it for the caller
    if app.token_watch.refused.is_set():
        raise ConfigError(TOKEN_REFUSED)


async def _settle(app: App, notifier_task: asyncio.Task[Any] | None) -> None:
    """Up to SHUTDOWN_GRACE for the updates being handled (people waiting for an answer)
    and the sends already started to finish. Starex gets the first STAREX_GRACE of it:
    then the look-ups still waiting are cut off, so those people are answered from what
    is stored rather than not at all (Telegram will not send their messages again)."""
    waits = [app.updates.wait()]
    if notifier_task is not None:
        waits.append(asyncio.shield(notifier_task))
    settled = asyncio.gather(*waits)
    done, _ = await asyncio.wait({settled}, timeout=STAREX_GRACE)
    if not done:
        await app.starex.aclose()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(SHUTDOWN_GRACE - STAREX_GRACE):
            await settled


async def close(app: App) -> None:
    for task in list(app.tasks):
        task.cancel()
    await asyncio.gather(*app.tasks, return_exceptions=True)
    await app.starex.aclose()
    await app.parcels.cap.aclose()
    await asyncio.gather(app.bot.session.close(), app.notifier.bot.session.close())
    await app.engine.dispose()
