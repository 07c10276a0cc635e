"""What can be checked of the Docker image without a Docker engine: who it runs as,
and that its HEALTHCHECK command really asks the running bot."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import sys
from pathlib import Path

from tests.fake_starex import FakeStarex
from tests.fake_telegram import FakeTelegram
from tests.harness import free_port, make_settings, running

DOCKERFILE = (Path(__file__).resolve().parent.parent / "Dockerfile").read_text()


def healthcheck_argv() -> list[str]:
    command = re.search(r"^HEALTHCHECK .*?CMD (.+)$", DOCKERFILE, re.M | re.S)
    assert command, "no HEALTHCHECK ... CMD in the Dockerfile"
    argv = shlex.split(command[1].replace("\\\n", " "))
    assert argv[0] == "python"
    return [sys.executable, *argv[1:]]


def test_image_runs_as_an_unprivileged_user() -> None:
    users = re.findall(r"^USER\s+(\S+)", DOCKERFILE, re.M)
    assert users, "the image would run as root"
    assert users[-1] not in ("root", "0", "0:0")
    assert re.search(rf"useradd .*\b{re.escape(users[-1])}\b", DOCKERFILE)


async def probe(port: int) -> int:
    process = await asyncio.create_subprocess_exec(
        *healthcheck_argv(),
        env={**os.environ, "PORT": str(port)},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    return await process.wait()


async def test_healthcheck_asks_the_bot_on_its_configured_port(tmp_path: Path) -> None:
    async with FakeTelegram() as tg, FakeStarex() as starex:
        settings = make_settings(
            f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}", tg.base_url, starex.base_url
        )
        async with running(settings):
            assert await probe(settings.port) == 0
        assert await probe(settings.port) != 0  # stopped: unhealthy
        assert await probe(free_port()) != 0
