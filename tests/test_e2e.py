"""The whole application (web server + polling + dispatcher) against fake Telegram
and fake Starex: a person subscribes, Starex posts a change, the person is told once."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bot.app import create_app, run
from bot.config import ConfigError
from bot.db import repo
from tests.fake_starex import FakeStarex
from tests.fake_telegram import FakeTelegram
from tests.harness import make_settings, running, serving, until, web_client

BARCODE = "AB123456789UZ"


@pytest.fixture
async def fakes() -> AsyncIterator[tuple[FakeTelegram, FakeStarex]]:
    async with FakeTelegram() as tg, FakeStarex() as starex:
        starex.add_trace(BARCODE, [(1, "2026-06-10 09:00:00")])
        yield tg, starex


async def test_subscribe_then_webhook_notifies_once_in_each_language(
    db_url: str, fakes: tuple[FakeTelegram, FakeStarex]
) -> None:
    tg, starex = fakes
    settings = make_settings(db_url, tg.base_url, starex.base_url)
    # The outbox is polled once a minute here: a message within seconds was woken by
    # the webhook.
    slow_poll = {"poll_interval": 60}
    async with running(settings, notifier_options=slow_poll), web_client(settings) as web:
        tg.message(10, f"/subscribe {BARCODE}", language_code="uz")
        tg.message(20, f"/subscribe {BARCODE.lower()}", language_code="ru-RU")
        tg.message(30, "/start", language_code="en")  # not subscribed: must hear nothing
        for chat in (10, 20, 30):
            await tg.wait_for_messages(1, chat_id=chat)

        body = {"barcode": BARCODE, "state": 9, "statetime": "2026-06-15 14:30:00"}
        path = settings.starex_webhook_path
        assert (await web.post(path, json=body)).status_code == 200
        assert (await web.post(path, json=body)).status_code == 200  # Starex retried

        uz = (await tg.wait_for_messages(2, chat_id=10))[1]["text"]
        ru = (await tg.wait_for_messages(2, chat_id=20))[1]["text"]
        assert BARCODE in uz and BARCODE in ru
        assert "Доставлен" in ru  # ru: Starex's own name
        assert "Yetkazib berildi" in uz  # uz: the project's translation of COMPLETE
        assert "15.06.2026 14:30" in uz and "15.06.2026 14:30" in ru

        await asyncio.sleep(0.5)  # anything extra would have been sent by now
        assert len(tg.sent_messages(10)) == 2
        assert len(tg.sent_messages(20)) == 2
        assert len(tg.sent_messages(30)) == 1

        # What /metrics promises (SPEC.md), counted from what just happened.
        metrics = (await web.get("/metrics")).text
        assert 'starex_webhooks_received_total{outcome="stored"} 1.0' in metrics
        assert 'starex_webhooks_received_total{outcome="duplicate"} 1.0' in metrics
        assert "notifications_sent_total 2.0" in metrics
        assert "notifications_pending 0.0" in metrics
        assert 'starex_api_request_seconds_count{endpoint="trace"} 2.0' in metrics


async def test_telegram_webhook_mode_checks_the_secret_token(
    tmp_path, fakes: tuple[FakeTelegram, FakeStarex]
) -> None:
    tg, starex = fakes
    settings = make_settings(
        f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}",
        tg.base_url,
        starex.base_url,
        telegram_webhook_url="https://bot.example.uz",
    )
    async with running(settings), web_client(settings) as web:
        assert tg.webhook_url == "https://bot.example.uz/telegram/webhook"
        assert not tg.calls_of("getUpdates")
        update = tg.make_update(55, "/help")
        for headers in ({}, {"X-Telegram-Bot-Api-Secret-Token": "wrong"}):
            response = await web.post("/telegram/webhook", json=update, headers=headers)
            assert response.status_code == 401
        assert not tg.sent_messages(55)
        # The token Telegram was given: what it will echo on every update.
        (registered,) = tg.calls_of("setWebhook")
        good = {"X-Telegram-Bot-Api-Secret-Token": registered.params["secret_token"]}
        for body in (b"not json", b"\xff\xfe", b"[]", b'{"update_id": "x"}', b"[" * 100_000):
            response = await web.post("/telegram/webhook", content=body, headers=good)
            assert response.status_code == 400, body[:20]
        not_gzip = {**good, "Content-Encoding": "gzip"}
        response = await web.post("/telegram/webhook", content=b"not gzip", headers=not_gzip)
        assert response.status_code == 400
        response = await web.post("/telegram/webhook", json=update, headers=good)
        assert response.status_code == 200
        (reply,) = await tg.wait_for_messages(1, chat_id=55)
        assert "/track" in reply["text"]


async def test_health_and_metrics_endpoints(
    tmp_path, fakes: tuple[FakeTelegram, FakeStarex]
) -> None:
    tg, starex = fakes
    settings = make_settings(
        f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}", tg.base_url, starex.base_url
    )
    async with running(settings), web_client(settings) as web:
        health = await web.get("/healthz")
        assert health.status_code == 200 and health.json() == {"status": "ok"}
        metrics = await web.get("/metrics")
        assert metrics.status_code == 200
        assert "starex_api_request_seconds" in metrics.text  # the dictionary fetch
    with pytest.raises(httpx.TransportError):
        async with web_client(settings) as web:
            await web.get("/healthz")  # stopped: nothing listens any more


async def test_a_client_stalled_mid_body_does_not_hold_up_shutdown(
    tmp_path, fakes: tuple[FakeTelegram, FakeStarex]
) -> None:
    tg, starex = fakes
    settings = make_settings(
        f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}", tg.base_url, starex.base_url
    )
    app = create_app(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(run(app, stop))
    await serving(settings, task)
    _, writer = await asyncio.open_connection("127.0.0.1", settings.port)
    writer.write(
        f"POST {settings.starex_webhook_path} HTTP/1.1\r\nHost: bot\r\n"
        "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{".encode()
    )
    await writer.drain()
    await asyncio.sleep(0.2)  # the request is being handled, its body never completes
    started = asyncio.get_running_loop().time()
    stop.set()
    await asyncio.wait_for(task, 15)
    took = asyncio.get_running_loop().time() - started
    writer.close()
    # aiohttp's own default waits 60 s; well inside the program's 7 s, so the
    # dispatcher still hands back what it claimed.
    assert took < 5, took


@pytest.mark.parametrize("pause", [0, 0.2])
async def test_a_webhook_sender_gone_mid_body_stores_nothing_and_logs_no_error(
    tmp_path, fakes: tuple[FakeTelegram, FakeStarex], caplog: pytest.LogCaptureFixture, pause: float
) -> None:
    caplog.set_level(logging.INFO, logger="aiohttp.access")
    tg, starex = fakes
    db = tmp_path / "bot.db"
    settings = make_settings(f"sqlite+aiosqlite:///{db}", tg.base_url, starex.base_url)
    async with running(settings) as app:
        _, writer = await asyncio.open_connection("127.0.0.1", settings.port)
        writer.write(
            f"POST {settings.starex_webhook_path} HTTP/1.1\r\nHost: bot\r\n"
            'Content-Type: application/json\r\nContent-Length: 500\r\n\r\n{"barcode"'.encode()
        )
        await writer.drain()
        await asyncio.sleep(pause)
        writer.close()  # gone, the body unfinished

        async def answered() -> bool:
            return "POST /starex/webhook/*** " in caplog.text

        await until(answered, 5, "the request handled")
        async with app.session_factory() as session:
            assert await repo.latest_events(session, ["AB123456789UZ"]) == {}
    # Anyone can do this: an ERROR with a traceback each time would fill the log.
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert " 500 " not in caplog.text


@pytest.mark.parametrize(
    ("status", "description", "named"),
    [
        (401, "Unauthorized", "BOT_TOKEN"),  # a token Telegram refuses
        # Not a Bot API server at all, or one that will not serve this bot.
        (404, "Not Found", r"TELEGRAM_API_URL .*Not Found"),
        (403, "Forbidden", r"TELEGRAM_API_URL .*Forbidden"),
        (418, "I'm a teapot", r"TELEGRAM_API_URL .*teapot"),
    ],
)
async def test_telegram_refusing_us_at_start_up_stops_with_a_clear_error(
    tmp_path,
    fakes: tuple[FakeTelegram, FakeStarex],
    caplog: pytest.LogCaptureFixture,
    status: int,
    description: str,
    named: str,
) -> None:
    tg, starex = fakes
    tg.fail(None, status=status, description=description, times=None)
    settings = make_settings(
        f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}", tg.base_url, starex.base_url
    )
    app = create_app(settings)
    with pytest.raises(ConfigError, match=named):
        await asyncio.wait_for(run(app, asyncio.Event()), 20)
    assert "Traceback" not in caplog.text


async def test_retry_after_on_getme_at_start_up_is_waited_out(
    tmp_path, fakes: tuple[FakeTelegram, FakeStarex], caplog: pytest.LogCaptureFixture
) -> None:
    tg, starex = fakes
    tg.fail("getMe", status=429, retry_after=1, times=1)
    settings = make_settings(
        f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}", tg.base_url, starex.base_url
    )
    async with running(settings):
        tg.message(10, "/help")
        await tg.wait_for_messages(1, chat_id=10)
    refused, answered = tg.calls_of("getMe")[:2]
    assert refused.status == 429 and answered.ok
    assert answered.at - refused.at >= 1.0
    assert "Traceback" not in caplog.text


async def test_a_web_page_instead_of_telegram_is_warned_about_not_a_traceback(
    tmp_path, fakes: tuple[FakeTelegram, FakeStarex], caplog: pytest.LogCaptureFixture
) -> None:
    """A proxy's or any web server's HTML page, where the Bot API should answer."""

    async def html_page(_: web.Request) -> web.Response:
        return web.Response(status=404, text="<html>Not here</html>", content_type="text/html")

    _, starex = fakes
    site = web.Application()
    site.router.add_route("*", "/{tail:.*}", html_page)
    async with TestServer(site, host="127.0.0.1") as server:
        page_url = str(server.make_url("")).rstrip("/")
        settings = make_settings(
            f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}", page_url, starex.base_url
        )

        async def warned() -> bool:
            return "Telegram unreachable at TELEGRAM_API_URL" in caplog.text

        async with running(settings):
            await until(warned, 10, "a warning naming TELEGRAM_API_URL")
    assert "Traceback" not in caplog.text
    assert "<html>" not in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_token_revoked_while_running_stops_with_a_clear_error(
    tmp_path, fakes: tuple[FakeTelegram, FakeStarex], caplog: pytest.LogCaptureFixture
) -> None:
    tg, starex = fakes
    settings = make_settings(
        f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}", tg.base_url, starex.base_url
    )
    app = create_app(settings)
    task = asyncio.create_task(run(app, asyncio.Event()))
    await serving(settings, task)
    tg.message(10, "/help")
    await tg.wait_for_messages(1, chat_id=10)
    tg.fail(None, status=401, description="Unauthorized", times=None)  # revoked in @BotFather
    tg.message(10, "/help")  # wakes the long poll; every call from now on is refused
    with pytest.raises(ConfigError, match="BOT_TOKEN"):
        await asyncio.wait_for(task, 20)
    assert "Traceback" not in caplog.text
