"""`python -m bot` as an operator runs it: a real process in its own working directory,
configured by its environment and a `.env` file, stopped by SIGTERM."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from bot import cli
from bot.cli import RedactingFormatter, secrets_of
from bot.config import ConfigError, Settings, load_settings
from tests.fake_starex import LOGIN, PASSWORD, FakeStarex
from tests.fake_telegram import FakeTelegram
from tests.harness import free_port, make_settings, running

TOKEN = "987654:CLI-token-never-logged"
SECRET = "cli-hook-secret-never-logged"
DB_PASSWORD = "db-pass-never-logged"
REDIS_PASSWORD = "redis-pass-never-logged"
BASIC_AUTH = base64.b64encode(f"{LOGIN}:{PASSWORD}".encode()).decode()
SECRETS = (TOKEN, PASSWORD, SECRET, DB_PASSWORD, REDIS_PASSWORD, BASIC_AUTH)
REQUIRED = {
    "BOT_TOKEN": TOKEN,
    "STAREX_BASE_URL": "http://127.0.0.1:9",
    "STAREX_LOGIN": LOGIN,
    "STAREX_PASSWORD": PASSWORD,
}
EVENT = {"barcode": "AB123456789UZ", "state": 5, "statetime": "2026-06-10 09:00:00"}
QUICK = 15.0  # a configuration error must not wait for the seconds aiogram takes to import
START = 60.0  # importing aiogram alone takes several seconds on a busy machine


def environ(**settings: str) -> dict[str, str]:
    """An explicit environment: nothing leaks in from the one running the tests."""
    return {"PATH": os.environ.get("PATH", ""), **settings}


def write_env_file(folder: Path, **settings: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ".env").write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
    return folder


def leaked(text: str) -> list[str]:
    return [secret for secret in SECRETS if secret in text]


def tables(db: Path) -> set[str]:
    with sqlite3.connect(db) as connection:
        rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {name for (name,) in rows}


# --- configuration errors: the process ends before it imports aiogram ----------------


def run_at_once(cases: dict[str, tuple[Path, dict[str, str]]]) -> dict[str, tuple[int, str, str]]:
    """Runs every case concurrently; (exit code, stdout, stderr) by case name."""
    processes = {
        name: subprocess.Popen(
            [sys.executable, "-m", "bot"],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, (cwd, env) in cases.items()
    }
    results = {}
    try:
        for name, process in processes.items():
            out, err = process.communicate(timeout=QUICK)
            results[name] = (process.returncode, out, err)
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    return results


def assert_one_line_naming(result: tuple[int, str, str], setting: str) -> None:
    code, out, err = result
    assert code == 2, err
    assert out == ""
    assert len(err.splitlines()) == 1, err
    assert setting in err, err
    assert "Traceback" not in err
    assert not leaked(err), err


def test_each_missing_required_setting_is_named(tmp_path: Path) -> None:
    cases = {
        name: (tmp_path, environ(**{k: v for k, v in REQUIRED.items() if k != name}))
        for name in REQUIRED
    }
    for name, result in run_at_once(cases).items():
        assert_one_line_naming(result, name)
        assert "not set" in result[2]


def test_the_console_script_is_the_same_program(tmp_path: Path) -> None:
    """`starex-bot`, as the README runs it, beside the interpreter that installed it."""
    script = Path(sys.executable).with_name("starex-bot")
    assert script.exists(), f"{script}: the console script is not installed"
    env = environ(**{k: v for k, v in REQUIRED.items() if k != "BOT_TOKEN"})
    result = subprocess.run(
        [script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=QUICK
    )
    assert_one_line_naming((result.returncode, result.stdout, result.stderr), "BOT_TOKEN")


MALFORMED = {
    "PORT": "abc",
    "STAREX_TIMEZONE": "Mars/Base",
    "DEFAULT_LANGUAGE": "de",
    "ADMIN_IDS": "x",
    "STAREX_BASE_URL": "not a url",
    # A malformed value that carries a secret itself.
    "DATABASE_URL": f"postgresql://bot:{DB_PASSWORD}@db/bot",
}


def test_each_malformed_setting_is_named_without_echoing_secrets(tmp_path: Path) -> None:
    cases = {name: (tmp_path, environ(**{**REQUIRED, name: v})) for name, v in MALFORMED.items()}
    for name, result in run_at_once(cases).items():
        assert_one_line_naming(result, name)
        assert "invalid" in result[2]


def test_dotenv_in_working_directory_is_read(tmp_path: Path) -> None:
    write_env_file(tmp_path, **REQUIRED, DEFAULT_LANGUAGE="de")
    # BOT_TOKEN and the rest came from .env, or BOT_TOKEN would be the one named.
    assert_one_line_naming(run_at_once({".env": (tmp_path, environ())})[".env"], "DEFAULT_LANGUAGE")


# --- the same rules, in-process for the rarer values ------------------------------------


@pytest.fixture
def clean_environ(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.chdir(tmp_path)
    for name, value in REQUIRED.items():
        monkeypatch.setenv(name, value)
    return monkeypatch


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BOT_TOKEN", "  "),
        ("STAREX_PASSWORD", ""),
        ("STAREX_LOGIN", ""),
        ("STAREX_LOGIN", "   "),
        ("STAREX_BASE_URL", f"http://{LOGIN}:{PASSWORD}@bad host/"),
        ("TELEGRAM_API_URL", "api.telegram.org"),
        ("TELEGRAM_WEBHOOK_URL", "ftp://bot.example.com"),
        ("PORT", "70000"),
        ("LOG_LEVEL", "chatty"),
        ("DATABASE_URL", "data/bot.db"),
        ("DATABASE_URL", f"mysql+aiomysql://bot:{DB_PASSWORD}@db/bot"),
        ("DATABASE_URL", f"sqlite:///{DB_PASSWORD}.db"),
        # In memory: every webhook answered 200 would be lost at exit.
        ("DATABASE_URL", "sqlite+aiosqlite:///:memory:"),
        ("DATABASE_URL", "sqlite+aiosqlite:///"),
        ("DATABASE_URL", "sqlite+aiosqlite://"),
        ("DATABASE_URL", "sqlite+aiosqlite:///file::memory:?uri=true"),
        ("DATABASE_URL", "sqlite+aiosqlite:///file:bot?mode=memory&cache=shared&uri=true"),
        # Each was a traceback at start-up: asyncpg refuses unknown options, the port
        # and the IPv6 host are parsed only when connecting (or redacting the log).
        ("DATABASE_URL", f"postgresql+asyncpg://bot:{DB_PASSWORD}@db/bot?foo=bar"),
        # A negative cache size hung the program, unstoppable by SIGTERM.
        (
            "DATABASE_URL",
            f"postgresql+asyncpg://bot:{DB_PASSWORD}@db/bot?prepared_statement_cache_size=-5",
        ),
        (
            "DATABASE_URL",
            f"postgresql+asyncpg://bot:{DB_PASSWORD}@db/bot?prepared_statement_cache_size=abc",
        ),
        (
            "DATABASE_URL",
            f"postgresql+asyncpg://bot:{DB_PASSWORD}@db/bot?target_session_attrs=weird",
        ),
        ("DATABASE_URL", f"postgresql+asyncpg://bot:{DB_PASSWORD}@db/bot?sslmode=maybe"),
        ("DATABASE_URL", f"postgresql+asyncpg://bot:{DB_PASSWORD}@db:abc/bot"),
        ("DATABASE_URL", f"postgresql+asyncpg://bot:{DB_PASSWORD}@db:99999/bot"),
        ("DATABASE_URL", f"postgresql+asyncpg://bot:{DB_PASSWORD}@[::1/bot"),
        ("REDIS_URL", f"redis://:{REDIS_PASSWORD}@[::1:6379/0"),
        ("REDIS_URL", f"http://:{REDIS_PASSWORD}@cache:6379/0"),
        ("REDIS_URL", "127.0.0.1:6379"),
    ],
)
def test_rarer_malformed_values(clean_environ: pytest.MonkeyPatch, name: str, value: str) -> None:
    clean_environ.setenv(name, value)
    with pytest.raises(ConfigError) as error:
        load_settings()
    message = str(error.value)
    assert message.startswith(f"{name} is invalid"), message
    assert "\n" not in message and not leaked(message)


@pytest.mark.parametrize(
    ("secret", "reason"),
    [
        ("hook/secret/0123456789", "letters, digits"),  # the route would never match
        ("hook secret 0123456789", "letters, digits"),
        ("hook?secret=0123456789", "letters, digits"),
        ("hook#secret#0123456789", "letters, digits"),
        ("hook%2Fsecret0123456789", "letters, digits"),
        ("ключ-0123456789abcdef", "letters, digits"),
        ("short-secret", "at least 16"),
    ],
)
def test_webhook_secret_must_be_long_and_url_safe(
    clean_environ: pytest.MonkeyPatch, secret: str, reason: str
) -> None:
    clean_environ.setenv("STAREX_WEBHOOK_SECRET", secret)
    with pytest.raises(ConfigError) as error:
        load_settings()
    message = str(error.value)
    assert message.startswith("STAREX_WEBHOOK_SECRET is invalid"), message
    assert reason in message and secret not in message and "\n" not in message


def test_url_safe_webhook_secrets_are_accepted(clean_environ: pytest.MonkeyPatch) -> None:
    for secret in (secrets.token_urlsafe(32), "Az09-_.~" * 2):
        clean_environ.setenv("STAREX_WEBHOOK_SECRET", secret)
        assert load_settings().starex_webhook_path == f"/starex/webhook/{secret}"


@pytest.mark.parametrize(
    "url",
    [
        "sqlite+aiosqlite:///data/bot.db",
        "sqlite+aiosqlite:////var/lib/bot/bot.db?timeout=30",
        "sqlite+aiosqlite:///file:data/bot.db?mode=rwc&uri=true",
    ],
)
def test_sqlite_files_are_accepted(clean_environ: pytest.MonkeyPatch, url: str) -> None:
    clean_environ.setenv("DATABASE_URL", url)
    assert load_settings().database_url == url


@pytest.mark.parametrize(
    ("url", "read_as"),
    [
        # SQLAlchemy knows its driver names in lower case only.
        ("SQLITE+AIOSQLITE:///data/bot.db", "sqlite+aiosqlite:///data/bot.db"),
        # libpq's spelling, as cloud consoles give it; asyncpg calls it ssl.
        (
            f"postgresql+asyncpg://bot:{DB_PASSWORD}@db/bot?sslmode=require",
            f"postgresql+asyncpg://bot:{DB_PASSWORD}@db/bot?ssl=require",
        ),
    ],
)
def test_database_urls_are_read_as_the_driver_takes_them(
    clean_environ: pytest.MonkeyPatch, url: str, read_as: str
) -> None:
    clean_environ.setenv("DATABASE_URL", url)
    assert load_settings().database_url == read_as


def test_values_are_normalised(clean_environ: pytest.MonkeyPatch) -> None:
    clean_environ.setenv("ADMIN_IDS", " 7, 8,,9 ")
    clean_environ.setenv("LOG_LEVEL", "debug")
    clean_environ.setenv("DEFAULT_LANGUAGE", "EN")
    clean_environ.setenv("STAREX_WEBHOOK_SECRET", "")
    clean_environ.setenv("DATABASE_URL", f"postgresql+asyncpg://bot:{DB_PASSWORD}@db/bot")
    clean_environ.setenv("REDIS_URL", "")
    settings = load_settings()
    assert settings.redis_url is None
    assert settings.admin_ids == {7, 8, 9}
    assert (settings.log_level, settings.default_language) == ("DEBUG", "en")
    assert settings.starex_webhook_secret is None
    assert settings.starex_webhook_path == "/starex/webhook"


def test_environment_wins_over_dotenv(clean_environ: pytest.MonkeyPatch, tmp_path: Path) -> None:
    write_env_file(tmp_path, PORT="abc", DEFAULT_LANGUAGE="uz", STAREX_TIMEZONE="Asia/Tokyo")
    clean_environ.setenv("PORT", "8081")
    clean_environ.setenv("DEFAULT_LANGUAGE", "en")
    settings = load_settings()
    assert (settings.port, settings.default_language) == (8081, "en")
    assert settings.starex_timezone == "Asia/Tokyo"  # only in .env


def test_unreadable_dotenv_is_a_configuration_error(
    clean_environ: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_bytes(b"DEFAULT_LANGUAGE=\xff\xfe\n")
    with pytest.raises(ConfigError, match=r"^\.env is not valid UTF-8"):
        load_settings()


def test_formatter_redacts_every_form_of_a_secret(clean_environ: pytest.MonkeyPatch) -> None:
    clean_environ.setenv("STAREX_WEBHOOK_SECRET", SECRET)
    clean_environ.setenv("DATABASE_URL", f"postgresql+asyncpg://bot:{DB_PASSWORD}@db/bot")
    clean_environ.setenv("REDIS_URL", f"redis://:{REDIS_PASSWORD}@cache:6379/0")
    formatter = RedactingFormatter("%(levelname)s %(message)s", secrets_of(load_settings()))
    quoted = TOKEN.replace(":", "%3A")
    args = (
        f"/bot{quoted}/getMe",
        f"Basic {BASIC_AUTH}",
        f"/starex/webhook/{SECRET}",
        f"{DB_PASSWORD} {REDIS_PASSWORD}",
    )
    try:
        raise RuntimeError(f"GET https://api.telegram.org/bot{TOKEN}/getMe failed")
    except RuntimeError:
        record = logging.LogRecord(
            "aiohttp.client",
            logging.ERROR,
            __file__,
            1,
            "url %s, auth %s, webhook %s, db %s",
            args,
            sys.exc_info(),
        )
    text = formatter.format(record)
    assert "Traceback" in text and "getMe failed" in text  # the rest of the line survives
    assert not leaked(text) and quoted not in text, text


def test_formatter_leaves_very_short_secrets_alone(clean_environ: pytest.MonkeyPatch) -> None:
    # A 2-letter password (Starex's choice, not ours) starred everywhere would garble
    # every line, and the pattern of stars would spell it out anyway.
    clean_environ.setenv("STAREX_PASSWORD", "ab")
    formatter = RedactingFormatter("%(message)s", secrets_of(load_settings()))
    credentials = base64.b64encode(f"{LOGIN}:ab".encode()).decode()
    record = logging.LogRecord(
        "x", logging.INFO, __file__, 1, "about a tab; Basic %s", (credentials,), None
    )
    assert formatter.format(record) == "about a tab; Basic ***"


# --- real runs ---------------------------------------------------------------------------
# aiogram takes seconds of CPU to import, so the runs that get past it start at once, in
# one module fixture, against fakes served from a thread of their own; each test then
# inspects its own run.


class BotProcess:
    """`python -m bot` started in `cwd`, its output in files there."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.cwd = cwd
        cwd.mkdir(parents=True, exist_ok=True)
        with (cwd / "stdout.log").open("wb") as out, (cwd / "stderr.log").open("wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bot"], cwd=cwd, env=env, stdout=out, stderr=err
            )

    @property
    def stderr(self) -> str:
        return (self.cwd / "stderr.log").read_text(errors="replace")

    @property
    def output(self) -> str:
        return (self.cwd / "stdout.log").read_text(errors="replace") + self.stderr

    def wait(self, seconds: float) -> int:
        try:
            return self.process.wait(seconds)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after {seconds} s:\n{self.output}") from None

    def wait_healthy(self, port: int) -> None:
        deadline = time.monotonic() + START
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as web:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise AssertionError(f"exited with {self.process.returncode}:\n{self.output}")
                try:
                    if web.get("/healthz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
        raise AssertionError(f"/healthz not 200 within {START} s:\n{self.output}")

    def terminate(self, signum: int = signal.SIGTERM) -> tuple[int, float]:
        """SIGTERM (or `signum`); (exit code, seconds it took to exit)."""
        started = time.monotonic()
        self.process.send_signal(signum)
        code = self.wait(15)
        return code, time.monotonic() - started

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def assert_clean(output: str) -> None:
    assert not leaked(output), leaked(output)
    assert "Traceback" not in output, output


_T = TypeVar("_T")


class Fakes:
    """FakeTelegram and FakeStarex served by an event loop in a thread of their own.

    `other_tg` is for a second bot running at the same time: polling one fake, both
    would take the same update and both answer it.
    """

    tg: FakeTelegram
    other_tg: FakeTelegram
    starex: FakeStarex

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> Fakes:
        self._thread.start()
        self.call(self._start())
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.call(self._stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()

    def call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    async def _start(self) -> None:
        self.tg = FakeTelegram()
        await self.tg.start()
        self.other_tg = FakeTelegram()
        await self.other_tg.start()
        self.starex = await FakeStarex().__aenter__()

    async def _stop(self) -> None:
        await self.starex.__aexit__()
        await self.tg.stop()
        await self.other_tg.stop()


async def ask(tg: FakeTelegram, chat: int, text: str) -> list[dict[str, Any]]:
    tg.message(chat, text, language_code="en")
    return await tg.wait_for_messages(1, chat_id=chat, timeout=10)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("runs")
    nobody = f"http://127.0.0.1:{free_port()}"  # connection refused
    runs: dict[str, Any] = {}
    with (
        Fakes() as fakes,
        socket.create_server(("127.0.0.1", 0)) as busy,
    ):
        runs["fakes"] = fakes
        try:
            runs["full_port"] = port = free_port()
            runs["full"] = BotProcess(
                root / "full",
                environ(
                    BOT_TOKEN=TOKEN,
                    TELEGRAM_API_URL=fakes.tg.base_url,
                    STAREX_BASE_URL=fakes.starex.base_url,
                    STAREX_LOGIN=LOGIN,
                    STAREX_PASSWORD=PASSWORD,
                    STAREX_WEBHOOK_SECRET=SECRET,
                    DATABASE_URL=f"sqlite+aiosqlite:///{root / 'full' / 'db' / 'bot.db'}",
                    HOST="127.0.0.1",
                    PORT=str(port),
                    LOG_LEVEL="DEBUG",
                ),
            )
            runs["defaults_port"] = port = free_port()
            # Settings from .env alone; no DATABASE_URL, no STAREX_WEBHOOK_SECRET; Starex
            # unreachable (its errors must not leak the password either).
            runs["defaults"] = BotProcess(
                write_env_file(
                    root / "defaults",
                    **{**REQUIRED, "STAREX_BASE_URL": nobody},
                    TELEGRAM_API_URL=fakes.other_tg.base_url,
                    HOST="127.0.0.1",
                    PORT=str(port),
                ),
                environ(),
            )
            runs["port_in_use"] = BotProcess(
                root / "port_in_use",
                environ(
                    **{**REQUIRED, "STAREX_BASE_URL": nobody},
                    TELEGRAM_API_URL=nobody,
                    DATABASE_URL=f"sqlite+aiosqlite:///{root / 'port_in_use' / 'bot.db'}",
                    HOST="127.0.0.1",
                    PORT=str(busy.getsockname()[1]),
                    STAREX_WEBHOOK_SECRET=SECRET,
                ),
            )
            # A database a later release migrated: at a revision this code does not know.
            newer = root / "newer_db"
            newer.mkdir()
            with sqlite3.connect(newer / "bot.db") as connection:
                connection.execute("CREATE TABLE alembic_version (version_num VARCHAR(32))")
                connection.execute("INSERT INTO alembic_version VALUES ('0099')")
            runs["newer_db"] = BotProcess(
                newer,
                environ(
                    **{**REQUIRED, "STAREX_BASE_URL": nobody},
                    TELEGRAM_API_URL=nobody,
                    DATABASE_URL=f"sqlite+aiosqlite:///{newer / 'bot.db'}",
                    HOST="127.0.0.1",
                    PORT=str(free_port()),
                ),
            )
            yield runs
        finally:
            for run in runs.values():
                if isinstance(run, BotProcess):
                    run.kill()


def test_full_run_serves_stores_and_stops_on_sigterm(runs: dict[str, Any]) -> None:
    bot, port, fakes = runs["full"], runs["full_port"], runs["fakes"]
    db = bot.cwd / "db" / "bot.db"  # the folder did not exist: created
    try:
        bot.wait_healthy(port)
        assert {"alembic_version", "events", "outbox", "states"} <= tables(db)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as web:
            stored = web.post(f"/starex/webhook/{SECRET}", json=EVENT)
            assert stored.status_code == 200, stored.text
            assert web.post("/starex/webhook", json=EVENT).status_code == 404
        (reply,) = fakes.call(ask(fakes.tg, 1001, "/start"))
        assert "/help" in reply["text"]
        code, took = bot.terminate()
    finally:
        bot.kill()
    assert code == 0, bot.output
    assert took < 10
    assert fakes.tg.tokens == {TOKEN}  # in use, so its absence below means something
    assert any("/dictionaries/states" in path for path in fakes.starex.requests)
    output = bot.output
    assert " DEBUG " in output  # LOG_LEVEL=DEBUG: the most there is to leak
    assert "POST /starex/webhook/*** 200" in output, output
    # httpx logs every request's URL at INFO (a look-up's holds the barcode), httpcore
    # its every step at DEBUG: WARNING and above only.
    assert not [line for line in output.splitlines() if " httpx: " in line or " httpcore." in line]
    assert_clean(output)
    with sqlite3.connect(db) as connection:
        events = connection.execute("SELECT barcode, state FROM events").fetchall()
    assert events == [(EVENT["barcode"], EVENT["state"])]


def test_defaults_dotenv_and_missing_webhook_secret(runs: dict[str, Any]) -> None:
    bot, port = runs["defaults"], runs["defaults_port"]
    try:
        bot.wait_healthy(port)
        # DATABASE_URL's default, relative to the working directory, folder created.
        assert {"alembic_version", "events", "states"} <= tables(bot.cwd / "data" / "bot.db")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as web:
            assert web.post("/starex/webhook", json=EVENT).status_code == 200
        code, took = bot.terminate(signal.SIGINT)  # Ctrl-C stops it as SIGTERM does
    finally:
        bot.kill()
    assert code == 0, bot.output
    assert took < 10
    assert "shutting down" in bot.stderr  # in order, not cut short
    warnings = [line for line in bot.stderr.splitlines() if " WARNING " in line]
    assert any("STAREX_WEBHOOK_SECRET" in line for line in warnings), bot.stderr
    assert_clean(bot.output)


def test_port_in_use_is_one_clear_error(runs: dict[str, Any]) -> None:
    bot = runs["port_in_use"]
    assert bot.wait(START) == 1
    errors = [line for line in bot.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, bot.stderr
    assert "PORT" in errors[0] and "in use" in errors[0]
    assert_clean(bot.output)


def test_a_host_that_is_no_address_names_host(caplog: pytest.LogCaptureFixture) -> None:
    # What binding HOST=256.1.1.1 raises; not bound here, which would ask a DNS server.
    settings = make_settings("sqlite+aiosqlite:///bot.db", "http://t", "http://s", host="256.1.1.1")
    cli.report_failure(socket.gaierror(socket.EAI_NONAME, "Name or service not known"), settings)
    (record,) = caplog.records
    assert record.levelname == "ERROR" and record.exc_info is None
    assert "256.1.1.1" in record.getMessage() and "(HOST, PORT)" in record.getMessage()


def test_database_of_a_newer_version_is_one_clear_error(runs: dict[str, Any]) -> None:
    bot = runs["newer_db"]
    assert bot.wait(START) == 1
    errors = [line for line in bot.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, bot.stderr
    assert "newer starex-bot version" in errors[0] and "0099" in errors[0], errors[0]
    assert_clean(bot.output)
    assert tables(bot.cwd / "bot.db") == {"alembic_version"}  # left as it was


def sigterm_handled(pid: int) -> bool:
    """Whether the process catches SIGTERM yet (Linux: the SigCgt mask in /proc)."""
    status = Path(f"/proc/{pid}/status").read_text()
    caught = int(
        next(line for line in status.splitlines() if line.startswith("SigCgt:")).split()[1], 16
    )
    return bool(caught & (1 << (signal.SIGTERM - 1)))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_sigterm_during_start_up_exits_at_once(tmp_path: Path) -> None:
    bot = BotProcess(
        tmp_path,
        environ(**REQUIRED, DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}"),
    )
    try:
        deadline = time.monotonic() + QUICK
        while not sigterm_handled(bot.process.pid):  # settings loaded, aiogram importing
            assert bot.process.poll() is None, bot.output
            assert time.monotonic() < deadline, bot.output
            time.sleep(0.01)
        code, took = bot.terminate()
    finally:
        bot.kill()
    assert code == 0, bot.output
    assert took < 5
    assert_clean(bot.output)


async def test_stop_while_starex_hangs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Listens, so connections are made, but never answers: a hanging Starex.
    with socket.create_server(("127.0.0.1", 0)) as hanging:
        hanging.setblocking(False)
        async with FakeTelegram() as tg:
            settings = make_settings(
                f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}",
                tg.base_url,
                f"http://127.0.0.1:{hanging.getsockname()[1]}",
            )
            stop = asyncio.Event()
            serving = asyncio.create_task(cli.serve(settings, stop))
            connections = []
            try:
                for _ in range(200):  # until the dictionary fetch waits on Starex
                    with contextlib.suppress(BlockingIOError):
                        connections.append(hanging.accept()[0])
                        break
                    await asyncio.sleep(0.05)
                assert connections, "never asked Starex"
                stop.set()
                async with asyncio.timeout(3):  # well before STOP_TIMEOUT forces it
                    await serving  # returns: the exit code is 0
            finally:
                serving.cancel()
                for connection in connections:
                    connection.close()
    assert "shutdown took longer" not in caplog.text


async def test_polling_survives_telegram_failing_at_start(tmp_path: Path) -> None:
    async with FakeTelegram() as tg, FakeStarex() as starex:
        tg.fail("getMe", status=502)  # one failure; Telegram is fine a moment later
        settings = make_settings(
            f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}", tg.base_url, starex.base_url
        )
        async with running(settings):
            tg.message(1001, "/help", language_code="en")
            await tg.wait_for_messages(1, chat_id=1001, timeout=2)
