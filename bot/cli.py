"""`starex-bot`: configure logging, load settings, run until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import importlib
import logging
import os
import signal
import socket
import sys
from types import FrameType
from urllib.parse import quote, unquote, urlsplit

from bot.config import ConfigError, Settings, load_settings

log = logging.getLogger("bot")

# From SIGTERM to exit. run() shuts down in order within about SHUTDOWN_GRACE, but it
# only looks at `stop` once start-up is over, and start-up can hang for long on an
# unreachable Starex or Telegram; Docker sends SIGKILL 10 s after SIGTERM.
STOP_TIMEOUT = 7.0
# The least a chatty library logger is set to, whatever LOG_LEVEL says: aiogram logs
# every handled update at INFO, alembic its plugins at every start, aiosqlite every
# operation, parameters included, at DEBUG, httpx every Starex request's URL (a
# look-up's holds the barcode) at INFO, and httpcore every step of one at DEBUG.
QUIETER_LOGGERS = {
    "aiogram.event": logging.WARNING,
    "alembic.runtime.plugins": logging.WARNING,
    "aiosqlite": logging.INFO,
    "httpx": logging.WARNING,
    "httpcore": logging.WARNING,
}
MIN_REDACTED = 4  # characters; see secrets_of()


class RedactingFormatter(logging.Formatter):
    """Last line of defence: no secret reaches a log line, whoever logged it
    (aiohttp errors, for one, can quote a URL that holds the bot token)."""

    def __init__(self, fmt: str, secrets: list[str]) -> None:
        super().__init__(fmt)
        # Longest first, so a secret containing another is replaced whole.
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


def secrets_of(settings: Settings) -> list[str]:
    """Every string that must never appear in a log line, in the forms it travels in."""
    values = [
        settings.bot_token.get_secret_value(),
        settings.starex_password.get_secret_value(),
    ]
    if settings.starex_webhook_secret is not None:
        values.append(settings.starex_webhook_secret.get_secret_value())
    values.append(unquote(urlsplit(settings.database_url).password or ""))
    if settings.redis_url is not None:
        values.append(unquote(urlsplit(settings.redis_url.get_secret_value()).password or ""))
    # A 1-3 character secret (a Starex password is Starex's choice) is left alone:
    # starred everywhere it would garble every line, and the pattern of stars would
    # spell it out anyway. Its Authorization header form below is still redacted.
    values = [v for v in values if len(v.strip()) >= MIN_REDACTED]
    forms = set(values)
    forms.update(quote(v, safe="") for v in values)  # inside URLs
    forms.update(quote(v, safe=":/") for v in values)
    # The Authorization header Starex receives, should any library ever log it.
    credentials = f"{settings.starex_login}:{settings.starex_password.get_secret_value()}"
    forms.add(base64.b64encode(credentials.encode()).decode())
    return sorted(forms)


def setup_logging(settings: Settings) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(
        RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s", secrets_of(settings))
    )
    logging.basicConfig(level=settings.log_level, handlers=[handler], force=True)
    # Warnings (ResourceWarning and the like) go through the redacting handler too.
    logging.captureWarnings(True)
    for name, least in QUIETER_LOGGERS.items():
        logging.getLogger(name).setLevel(max(least, logging.getLogger().level))


async def serve(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Run the application until `stop` is set (by default: on SIGTERM/SIGINT), then give
    it STOP_TIMEOUT to shut down in order."""
    from bot.app import close, create_app, run

    app = create_app(settings)
    on_signals = stop is None  # the real program; tests set `stop` themselves
    stop = asyncio.Event() if stop is None else stop
    running = asyncio.create_task(run(app, stop))
    if on_signals:
        _stop_on_signals(stop, running)
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait((running, stopping), return_when=asyncio.FIRST_COMPLETED)
        if not running.done():
            await asyncio.wait((running,), timeout=STOP_TIMEOUT)
        if not running.done():
            log.warning("shutdown took longer than %.0f s; stopping now", STOP_TIMEOUT)
            running.cancel()
        try:
            await running
        except asyncio.CancelledError:
            if not stop.is_set():
                raise
            await close(app)  # cancelled mid-start-up or mid-shutdown
    except BaseException:
        running.cancel()
        with contextlib.suppress(BaseException):
            await running
        await close(app)
        raise
    finally:
        stopping.cancel()


def _stop_on_signals(stop: asyncio.Event, running: asyncio.Task[None]) -> None:
    def on_signal() -> None:
        if stop.is_set():  # a second Ctrl-C: stop waiting for a graceful end
            running.cancel()
        stop.set()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal)


def _exit_before_start(signum: int, frame: FrameType | None) -> None:
    # Nothing has started yet, so there is nothing to finish. Not SystemExit: raised
    # inside pydantic-core's Rust code (aiogram's import) it becomes a SchemaError.
    os._exit(0)


def main() -> int:  # the console script; its return value is the exit code
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"starex-bot: configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings)
    # Until serve() hands the signals to the event loop.
    signal.signal(signal.SIGTERM, _exit_before_start)
    signal.signal(signal.SIGINT, _exit_before_start)
    try:
        # Only now: aiogram (and SQLAlchemy) take seconds to import, and a
        # configuration error above must be reported at once.
        importlib.import_module("bot.app")
        asyncio.run(serve(settings))
    except ConfigError as exc:  # found only at run time, e.g. a token Telegram refuses
        log.error("configuration error: %s", exc)
        return 2
    except Exception as exc:
        report_failure(exc, settings)
        return 1
    return 0


def report_failure(exc: Exception, settings: Settings) -> None:
    """One line for the failures an operator can fix; a traceback for the others."""
    from sqlalchemy.exc import SQLAlchemyError

    from bot.db.engine import UnknownRevisionError

    if isinstance(exc, UnknownRevisionError):
        log.error("cannot start: %s", exc)
    elif isinstance(exc, SQLAlchemyError):
        # The driver's message, not SQLAlchemy's, which appends the SQL and a link.
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        log.error("database unavailable at start-up: %s: %s", type(exc).__name__, reason)
    elif isinstance(exc, socket.gaierror) or (
        isinstance(exc, OSError) and exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL)
    ):  # in use, not ours, or (gaierror) a HOST that is no address at all
        log.error(
            "cannot listen on %s:%s (HOST, PORT): %s", settings.host, settings.port, exc.strerror
        )
    elif isinstance(exc, OSError):
        log.error("cannot start: %s", exc)
    else:
        # Unexpected: the traceback helps, and goes through the redacting formatter.
        log.error("starex-bot stopped by an unexpected error", exc_info=exc)
