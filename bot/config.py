"""Settings read from the environment and a `.env` file (SPEC.md, "Configuration")."""

from __future__ import annotations

import importlib.util
import re
from typing import Annotated
from urllib.parse import parse_qs, parse_qsl, unquote, urlencode, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AnyHttpUrl, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

LANGUAGES = ("ru", "uz", "en")
# The async drivers the engine supports, by backend. Checked by hand, not with
# SQLAlchemy's make_url: importing SQLAlchemy would delay every configuration error.
ASYNC_DRIVERS = {"sqlite": "aiosqlite", "postgresql": "asyncpg"}
_TOKEN = re.compile(r"[0-9]+:[A-Za-z0-9_-]+")
_REDIS_URL = re.compile(r"^(redis|rediss|unix)://", re.IGNORECASE)
_URL_SCHEME = re.compile(r"^([a-z0-9]+)\+([a-z0-9_]+)://", re.IGNORECASE)
# RFC 3986's unreserved characters: the secret is a path segment of the URL given to
# Starex, and anything else (`/`, `?`, `%`, a space) makes that URL miss the route.
_URL_SAFE = re.compile(r"[A-Za-z0-9._~-]+")
MIN_WEBHOOK_SECRET = 16
# What a PostgreSQL URL's query may hold, and the values each takes: SQLAlchemy hands
# them to asyncpg's connect() as they are, which fails on anything else at start-up (a
# TypeError, a traceback, or with a negative cache size a hang). `sslmode`, which libpq
# and every cloud console spell, is asyncpg's `ssl`.
POSTGRES_OPTIONS: dict[str, tuple[str, ...] | None] = {
    "ssl": ("disable", "allow", "prefer", "require", "verify-ca", "verify-full"),
    "target_session_attrs": (
        "any",
        "primary",
        "standby",
        "prefer-standby",
        "read-write",
        "read-only",
    ),
    "prepared_statement_cache_size": None,  # a whole number; 0 behind PgBouncer
}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    bot_token: SecretStr
    telegram_api_url: AnyHttpUrl = AnyHttpUrl("https://api.telegram.org")
    telegram_webhook_url: AnyHttpUrl | None = None

    starex_base_url: AnyHttpUrl
    starex_login: str
    starex_password: SecretStr
    starex_webhook_secret: SecretStr | None = None
    starex_timezone: str = "Asia/Tashkent"

    database_url: str = "sqlite+aiosqlite:///data/bot.db"
    redis_url: SecretStr | None = None
    host: str = "0.0.0.0"
    port: int = Field(default=8080, ge=1, le=65535)
    default_language: str = "ru"
    admin_ids: Annotated[frozenset[int], NoDecode] = frozenset()
    log_level: str = "INFO"

    @field_validator("bot_token", "starex_password", "starex_login")
    @classmethod
    def _not_empty(cls, value: SecretStr | str) -> SecretStr | str:
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        if not text.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("bot_token")
    @classmethod
    def _token_shape(cls, value: SecretStr) -> SecretStr:
        # What @BotFather issues: `<bot id>:<secret>`; aiogram would raise deep inside.
        if not _TOKEN.fullmatch(value.get_secret_value()):
            raise ValueError("must look like 123456789:AAE... (the token from @BotFather)")
        return value

    @field_validator("telegram_webhook_url")
    @classmethod
    def _https(cls, value: AnyHttpUrl | None) -> AnyHttpUrl | None:
        if value is not None and value.scheme != "https":
            raise ValueError("must be an https:// URL (Telegram delivers webhooks over HTTPS)")
        return value

    @field_validator("starex_webhook_secret", "telegram_webhook_url", "redis_url", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("starex_webhook_secret")
    @classmethod
    def _url_safe_secret(cls, value: SecretStr | None) -> SecretStr | None:
        # Messages never quote the value.
        if value is None:
            return None
        secret = value.get_secret_value()
        if not _URL_SAFE.fullmatch(secret):
            raise ValueError(
                "may hold only Latin letters, digits, '-', '_', '.' and '~' (it is part of a URL)"
            )
        if len(secret) < MIN_WEBHOOK_SECRET:
            raise ValueError(
                f"must be at least {MIN_WEBHOOK_SECRET} characters long "
                '(python3 -c "import secrets; print(secrets.token_urlsafe(32))")'
            )
        return value

    @field_validator("starex_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @field_validator("database_url")
    @classmethod
    def _async_database(cls, value: str) -> str:
        # Messages never quote the URL: it may hold the database password.
        match = _URL_SCHEME.match(value)
        backend, driver = (match[1].lower(), match[2].lower()) if match else ("", "")
        if ASYNC_DRIVERS.get(backend) != driver:
            raise ValueError("must start with sqlite+aiosqlite:// or postgresql+asyncpg://")
        value = f"{backend}+{driver}://" + value[match.end() :]  # SQLAlchemy: lower case
        _check_host_and_port(value)
        if backend == "postgresql":
            value = _postgres_options(value)
        if importlib.util.find_spec(driver) is None:
            raise ValueError(f"needs the {driver} package (pip install 'starex-bot[postgres]')")
        if backend == "sqlite" and _sqlite_in_memory(value):
            # Gone at exit, with every webhook answered 200 and its notifications.
            raise ValueError(
                "is an in-memory SQLite database, which loses everything at exit; "
                "give a file, e.g. sqlite+aiosqlite:///data/bot.db"
            )
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        # Messages never quote the URL: it may hold the Redis password.
        if not _REDIS_URL.match(value.get_secret_value()):
            raise ValueError("must start with redis://, rediss:// or unix://")
        _check_host_and_port(value.get_secret_value())
        if importlib.util.find_spec("redis") is None:
            raise ValueError("needs the redis package (pip install 'starex-bot[redis]')")
        return value

    @field_validator("default_language")
    @classmethod
    def _known_language(cls, value: str) -> str:
        value = value.strip().lower()
        if value not in LANGUAGES:
            raise ValueError(f"must be one of {', '.join(LANGUAGES)}")
        return value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        value = value.strip().upper()
        if value not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return value

    @field_validator("admin_ids", mode="before")
    @classmethod
    def _split_ids(cls, value: object) -> object:
        if isinstance(value, str):
            parts = [p for p in value.replace(" ", "").split(",") if p]
            try:
                return frozenset(int(p) for p in parts)
            except ValueError:
                raise ValueError("must be comma-separated numeric Telegram ids") from None
        return value

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.starex_timezone)

    @property
    def starex_webhook_path(self) -> str:
        if self.starex_webhook_secret is None:
            return "/starex/webhook"
        return f"/starex/webhook/{self.starex_webhook_secret.get_secret_value()}"


def _check_host_and_port(url: str) -> None:
    try:
        urlsplit(url).port  # noqa: B018 (parsing it raises for 'abc', 99999, '[::1')
    except ValueError:
        raise ValueError("is not a valid URL (host or port)") from None


def _postgres_options(url: str) -> str:
    parts = urlsplit(url)
    options = []
    for key, option in parse_qsl(parts.query, keep_blank_values=True):
        key = "ssl" if key == "sslmode" else key
        if key not in POSTGRES_OPTIONS:
            raise ValueError(
                f"has the option {key!r}, which asyncpg does not take "
                f"(it takes {', '.join(POSTGRES_OPTIONS)}, and sslmode as ssl)"
            )
        choices = POSTGRES_OPTIONS[key]
        if choices is None and not (option.isascii() and option.isdigit() and len(option) < 7):
            raise ValueError(f"has {key}={option!r}; it takes a whole number")
        if choices is not None and option not in choices:
            raise ValueError(f"has {key}={option!r}; it takes one of {', '.join(choices)}")
        options.append((key, option))
    return parts._replace(query=urlencode(options)).geturl()


def _sqlite_in_memory(url: str) -> bool:
    """The forms SQLite opens in memory: no path, `:memory:`, and the URI forms."""
    parts = urlsplit(url)
    database = unquote(parts.path.removeprefix("/"))
    mode = parse_qs(parts.query).get("mode", [])
    return database in ("", ":memory:") or database.startswith("file::memory:") or "memory" in mode


class ConfigError(Exception):
    """A setting is missing or malformed; the message is one line naming it."""


def load_settings(**overrides: object) -> Settings:
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        errors = exc.errors()
        missing = [str(e["loc"][0]).upper() for e in errors if e["type"] == "missing"]
        if missing:  # all at once: a newcomer should not find them one run at a time
            verb = "is" if len(missing) == 1 else "are"
            raise ConfigError(f"{', '.join(missing)} {verb} required but not set") from None
        first = errors[0]
        name = str(first["loc"][0]).upper() if first["loc"] else "configuration"
        # Never echo the input: it may be a secret.
        reason = first["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{name} is invalid: {reason}") from None
    except UnicodeDecodeError:
        raise ConfigError(".env is not valid UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f".env cannot be read: {exc.strerror}") from None
    except SettingsError as exc:
        raise ConfigError(str(exc)) from None
