"""`starex-bot`: configure logging, load settings, run until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from sqlalchemy.exc import SQLAlchemyError

from bot.app import close, create_app, run
from bot.config import ConfigError, Settings, load_settings

log = logging.getLogger("bot")


class RedactingFormatter(logging.Formatter):
    """Last line of defence: no secret reaches a log line, whoever logged it
    (aiohttp errors, for one, can quote a URL that holds the bot token)."""

    def __init__(self, fmt: str, secrets: list[str]) -> None:
        super().__init__(fmt)
        self._secrets = [s for s in secrets if s]

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


def setup_logging(settings: Settings) -> None:
    secrets = [
        settings.bot_token.get_secret_value(),
        settings.starex_password.get_secret_value(),
    ]
    if settings.starex_webhook_secret is not None:
        secrets.append(settings.starex_webhook_secret.get_secret_value())
    handler = logging.StreamHandler()
    handler.setFormatter(
        RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s", secrets)
    )
    logging.basicConfig(level=settings.log_level, handlers=[handler], force=True)
    # aiogram logs every handled update at INFO; that is noise for an operator.
    logging.getLogger("aiogram.event").setLevel(logging.WARNING)


async def serve(settings: Settings) -> None:
    app = create_app(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await run(app, stop)
    except BaseException:
        await close(app)
        raise


def main() -> int:  # the console script; its return value is the exit code
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"starex-bot: configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings)
    try:
        asyncio.run(serve(settings))
    except SQLAlchemyError as exc:
        log.error("database unavailable at start-up: %s", type(exc).__name__)
        return 1
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 1
    return 0
