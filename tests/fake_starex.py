"""A fake Starex API (aiohttp) for end-to-end tests: Basic Auth, states, traces."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

LOGIN, PASSWORD = "shop", "s3cret-pass"

DEFAULT_STATES = [
    {"code": 0, "name": "Ожидает синхронизации", "advanced": "AWAITING_SYNC"},
    {"code": 1, "name": "Новый", "advanced": "NEW"},
    {"code": 5, "name": "В пути", "advanced": "IN_TRANSIT"},
    {"code": 9, "name": "Доставлен", "advanced": "COMPLETE"},
    {"code": 12, "name": "Доставляется", "advanced": "DELIVERY"},
]


class FakeStarex:
    def __init__(self) -> None:
        self.states: list[dict[str, Any]] = list(DEFAULT_STATES)
        self.traces: dict[str, dict[str, Any]] = {}
        self.fault: tuple[int, str] | None = None  # (status, body) answered to everything
        self.fault_type = "text/html"  # the fault body's content type
        self.delay = 0.0
        self.requests: list[str] = []
        app = web.Application()
        app.router.add_get("/api/v1/dictionaries/states", self._states)
        app.router.add_get("/api/v1/order/trace", self._trace)
        self._server = TestServer(app, host="127.0.0.1")

    @property
    def base_url(self) -> str:
        return str(self._server.make_url("/"))

    async def __aenter__(self) -> FakeStarex:
        await self._server.start_server()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._server.close()

    def add_trace(self, barcode: str, steps: list[tuple[int, str]], **fields: Any) -> None:
        by_code = {s["code"]: s for s in self.states}
        self.traces[barcode] = {
            "barcode": barcode,
            "date": fields.get("date", "2026-06-10 09:00:00"),
            "weight": fields.get("weight", 1.5),
            "recipient": fields.get("recipient", "Alisher Karimov"),
            "trace": [
                {
                    "code": code,
                    "name": by_code.get(code, {}).get("name"),
                    "advansed": by_code.get(code, {}).get("advanced"),
                    "statetime": when,
                }
                for code, when in steps
            ],
        }

    async def _guard(self, request: web.Request) -> web.Response | None:
        self.requests.append(request.path_qs)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fault is not None:
            status, text = self.fault
            return web.Response(status=status, text=text, content_type=self.fault_type)
        expected = "Basic " + base64.b64encode(f"{LOGIN}:{PASSWORD}".encode()).decode()
        if request.headers.get("Authorization") != expected:
            return web.json_response(
                {"success": False, "error": {"code": 401, "message": "Unauthorized"}},
                status=401,
            )
        return None

    async def _states(self, request: web.Request) -> web.Response:
        return await self._guard(request) or web.json_response(
            {"success": True, "data": self.states}
        )

    async def _trace(self, request: web.Request) -> web.Response:
        refused = await self._guard(request)
        if refused is not None:
            return refused
        trace = self.traces.get(request.query.get("barcode", ""))
        if trace is None:
            return web.json_response(
                {"success": False, "error": {"code": 422, "message": "Order not found"}}
            )
        return web.json_response({"success": True, "data": trace})
