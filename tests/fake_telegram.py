"""In-process fake Telegram Bot API server for handler and end-to-end tests.

aiogram's real HTTP session talks to it::

    async with FakeTelegram() as tg:
        session = AiohttpSession(api=TelegramAPIServer.from_base(tg.base_url))
        bot = Bot("42:TEST", session=session)
        tg.message(100, "/start")          # queue an update for getUpdates
        await tg.wait_for_messages(1, chat_id=100)
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

BOT_USER = {"id": 42, "is_bot": True, "first_name": "Starex", "username": "starex_test_bot"}
MAX_TEXT_LENGTH = 4096
SENT_METHODS = ("sendmessage", "editmessagetext")
# aiogram JSON-encodes every non-str field (chat_id="123", reply_markup="{...}"); these stay str.
# fmt: off
STR_FIELDS = frozenset({
    "text", "caption", "parse_mode", "callback_query_id", "inline_message_id", "language_code",
    "url", "secret_token", "action", "data", "query", "title", "description", "short_description",
    "name", "emoji", "business_connection_id", "message_effect_id",
})
# fmt: on
BLOCKED = "Forbidden: bot was blocked by the user"
CHAT_NOT_FOUND = "Bad Request: chat not found"
DEFAULT_DESCRIPTIONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    409: "Conflict: terminated by other getUpdates request",
    429: "Too Many Requests: retry after {retry_after}",
    500: "Internal Server Error",
    502: "Bad Gateway",
}
NOT_MODIFIED = (
    "Bad Request: message is not modified: specified new message content and reply markup"
    " are exactly the same as a current content and reply markup of the message"
)

# ---------------------------------------------------------------- strict Telegram HTML
_TAG_ATTRS: dict[str, frozenset[str]] = {
    **dict.fromkeys(["b", "strong", "i", "em", "u", "ins", "s", "strike", "del"], frozenset()),
    **dict.fromkeys(["pre", "tg-spoiler"], frozenset()),
    "a": frozenset({"href"}),
    "code": frozenset({"class"}),
    "span": frozenset({"class"}),
    "blockquote": frozenset({"expandable"}),
    "tg-emoji": frozenset({"emoji-id"}),
}
_ATTR = r"""([a-zA-Z-]+)(?:\s*=\s*("[^"]*"|'[^']*'|[^\s"'>]+))?"""
_TAG_RE = re.compile(rf"<(/?)([a-zA-Z][a-zA-Z0-9-]*)((?:\s+{_ATTR})*)\s*>")
_ATTR_RE = re.compile(_ATTR)
_ENTITY_RE = re.compile(r"&(?:#(\d+)|#[xX]([0-9a-fA-F]+)|(lt|gt|amp|quot));")
_NAMED_ENTITIES = {"lt": "<", "gt": ">", "amp": "&", "quot": '"'}


def parse_html(text: str) -> str:
    """Validate Telegram HTML strictly; return the visible text. Raises ValueError."""
    out: list[str] = []
    stack: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == "&":
            if not (m := _ENTITY_RE.match(text, i)):
                raise ValueError(f'Unsupported HTML entity or bare "&" at offset {i}')
            out.append(
                _NAMED_ENTITIES[m[3]] if m[3] else chr(int(m[1] or m[2], 10 if m[1] else 16))
            )
            i = m.end()
        elif text[i] == "<":
            if not (m := _TAG_RE.match(text, i)):
                raise ValueError(f'Unexpected "<" at offset {i}; escape it as &lt;')
            closing, name = bool(m[1]), m[2].lower()
            attrs = {a[1].lower(): (a[2] or "").strip("\"'") for a in _ATTR_RE.finditer(m[3])}
            kind = "end" if closing else "start"
            if name not in _TAG_ATTRS:
                raise ValueError(f'Unsupported {kind} tag "{name}" at offset {i}')
            if closing:
                if attrs or not stack or stack[-1] != name:
                    raise ValueError(f'Unexpected end tag "{name}" at offset {i}')
                stack.pop()
            else:
                if bad := set(attrs) - _TAG_ATTRS[name]:
                    raise ValueError(f'Unsupported attribute {sorted(bad)} in tag "{name}"')
                if name == "span" and attrs.get("class") != "tg-spoiler":
                    raise ValueError(f'Tag "span" must have class "tg-spoiler" at offset {i}')
                if name == "tg-emoji" and not attrs.get("emoji-id"):
                    raise ValueError(f'Tag "tg-emoji" must have attribute "emoji-id" at offset {i}')
                stack.append(name)
            i = m.end()
        else:
            out.append(text[i])
            i += 1
    if stack:
        raise ValueError(f'Can\'t find end tag corresponding to start tag "{stack[-1]}"')
    return "".join(out)


# ---------------------------------------------------------------- records
@dataclass
class Call:
    method: str
    params: dict[str, Any]
    status: int = 200  # HTTP status answered; 0 = connection dropped without an answer
    result: Any = None
    description: str | None = None
    token: str = ""
    at: float = field(default_factory=time.monotonic)  # when the request arrived

    @property
    def ok(self) -> bool:
        return self.status == 200


@dataclass
class Fault:
    method: str | None  # None = any method
    chat_id: int | None  # None = any chat
    status: int  # 0 = drop the connection
    description: str
    retry_after: int | None
    times: int | None  # None = forever


class ApiError(Exception):
    def __init__(self, status: int, description: str, retry_after: int | None = None) -> None:
        super().__init__(description)
        self.status, self.description, self.retry_after = status, description, retry_after


# ---------------------------------------------------------------- server
class FakeTelegram:
    def __init__(self, *, strict_chats: bool = False) -> None:
        self.strict_chats = strict_chats  # True: chat_id not in known_chats -> "chat not found"
        self.known_chats: set[int] = set()  # filled by the update builders / push_update
        self.calls: list[Call] = []
        self.tokens: set[str] = set()
        self.commands: dict[str, list[dict]] = {}  # language_code ("" = default) -> commands
        self.webhook_url = ""
        self.messages: dict[tuple[int, int], dict] = {}  # (chat_id, message_id) -> bot Message
        self.base_url = ""
        self.port = 0  # kept across stop() and start(): Telegram back at the same address
        self.delay = 0.0  # seconds before a sendMessage is answered (a slow Telegram)
        self._contents: dict[tuple[int, int], tuple] = {}  # ((raw text, parse_mode), markup)
        self._updates: list[dict] = []
        self._faults: list[Fault] = []
        self._update_ids = itertools.count(1)
        self._callback_ids = itertools.count(1)
        self._message_ids: dict[int, itertools.count] = {}
        self._changed = asyncio.Event()
        self._closing = False
        self._runner: web.AppRunner | None = None
        self._methods: dict[str, Callable[[dict], Any]] = {
            "getme": lambda p: BOT_USER,
            "getupdates": self._get_updates,
            "setwebhook": self._set_webhook,
            "deletewebhook": self._delete_webhook,
            "getwebhookinfo": lambda p: {
                "url": self.webhook_url,
                "has_custom_certificate": False,
                "pending_update_count": len(self._updates),
            },
            "setmycommands": self._set_commands,
            "deletemycommands": self._delete_commands,
            "getmycommands": lambda p: self.commands.get(p.get("language_code", ""), []),
            "sendmessage": self._send_message,
            "editmessagetext": lambda p: self._edit(p, self._check_text(p)),
            "editmessagereplymarkup": lambda p: self._edit(p, None),
        }

    # -- lifecycle
    async def start(self) -> None:
        """Serve; after stop(), again on the same port, with everything recorded so far."""
        self._closing = False
        app = web.Application()
        app.router.add_route("*", "/bot{token}/{method}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        host, self.port = self._runner.addresses[0][:2]
        self.base_url = f"http://{host}:{self.port}"

    async def stop(self) -> None:
        """Stop serving: connections are closed and new ones refused (Telegram is down)."""
        self._closing = True  # wakes pending long polls
        self._notify()
        if self._runner:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeTelegram:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- inspection
    def calls_of(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method.lower() == method.lower()]

    def sent_calls(self, chat_id: int | None = None) -> list[Call]:
        """Successful sendMessage/editMessageText calls (Call.at = arrival time)."""
        return [
            c
            for c in self.calls
            if c.ok
            and c.method.lower() in SENT_METHODS
            and (chat_id is None or c.params.get("chat_id") == chat_id)
        ]

    def sent_messages(self, chat_id: int | None = None) -> list[dict]:
        return [c.params for c in self.sent_calls(chat_id)]

    async def wait_for_messages(
        self,
        n: int,
        chat_id: int | None = None,
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> list[dict]:
        try:
            await self._wait(lambda: len(self.sent_messages(chat_id)) >= n, timeout)
        except TimeoutError:
            seen = [m.get("text") for m in self.sent_messages(chat_id)]
            calls = [(c.method, c.params.get("chat_id"), c.status) for c in self.calls]
            raise AssertionError(
                f"expected {n} sent messages (chat_id={chat_id}) within {timeout}s, "
                f"got {len(seen)}: {seen}; all calls: {calls}"
            ) from None
        return self.sent_messages(chat_id)

    # -- updates
    def push_update(self, update: dict) -> dict:
        update.setdefault("update_id", next(self._update_ids))
        msg = update.get("message") or (update.get("callback_query") or {}).get("message") or {}
        if "chat" in msg:
            self.known_chats.add(msg["chat"]["id"])
        self._updates.append(update)
        self._notify()
        return update

    def make_message(
        self,
        chat_id: int,
        text: str,
        *,
        language_code: str = "en",
        first_name: str = "Test",
        user_id: int | None = None,
    ) -> dict:
        msg: dict[str, Any] = {
            "message_id": self._next_message_id(chat_id),
            "date": int(time.time()),
            "chat": {"id": chat_id, "type": "private", "first_name": first_name},
            "from": self._user(chat_id, user_id, first_name, language_code),
            "text": text,
        }
        command = text.split(maxsplit=1)[0] if text.strip() else ""
        if command.startswith("/") and len(command) > 1:
            length = len(command.encode("utf-16-le")) // 2
            msg["entities"] = [{"type": "bot_command", "offset": 0, "length": length}]
        self.known_chats.add(chat_id)
        return {"update_id": next(self._update_ids), "message": msg}

    def make_callback(
        self,
        chat_id: int,
        data: str,
        *,
        message_id: int = 1,
        language_code: str = "en",
        first_name: str = "Test",
        user_id: int | None = None,
    ) -> dict:
        message = self.messages.get((chat_id, message_id)) or {
            "message_id": message_id,
            "date": int(time.time()),
            "chat": {"id": chat_id, "type": "private"},
            "from": BOT_USER,
        }
        self.known_chats.add(chat_id)
        query = {
            "id": str(next(self._callback_ids)),
            "from": self._user(chat_id, user_id, first_name, language_code),
            "chat_instance": str(chat_id),
            "message": message,
            "data": data,
        }
        return {"update_id": next(self._update_ids), "callback_query": query}

    def make_update(
        self, chat_id: int, text: str | None = None, *, data: str | None = None, **kw: Any
    ) -> dict:
        """Build (without queueing) a message update, or a callback update if `data` is given."""
        if data is not None:
            return self.make_callback(chat_id, data, **kw)
        assert text is not None, "make_update needs text or data"
        return self.make_message(chat_id, text, **kw)

    def message(self, chat_id: int, text: str, **kw: Any) -> dict:
        return self.push_update(self.make_message(chat_id, text, **kw))

    def callback(self, chat_id: int, data: str, **kw: Any) -> dict:
        return self.push_update(self.make_callback(chat_id, data, **kw))

    # -- fault injection
    def fail(
        self,
        method: str | None = "sendMessage",
        *,
        chat_id: int | None = None,
        status: int = 429,
        description: str | None = None,
        retry_after: int | None = None,
        times: int | None = 1,
    ) -> None:
        """Queue a fault for matching calls (method/chat None = any). status 0 drops the socket."""
        if status == 429 and retry_after is None:
            retry_after = 1  # real 429s always carry retry_after
        if description is None:
            description = DEFAULT_DESCRIPTIONS.get(status, "Error").format(retry_after=retry_after)
        self._faults.append(Fault(method, chat_id, status, description, retry_after, times))

    def drop_connections(self, times: int | None = 1, method: str | None = "sendMessage") -> None:
        """Close the socket without answering (aiogram raises TelegramNetworkError)."""
        self.fail(method, status=0, times=times)

    def blocked(self, chat_id: int) -> None:
        self.fail(None, chat_id=chat_id, status=403, description=BLOCKED, times=None)

    def chat_not_found(self, chat_id: int) -> None:
        self.fail(None, chat_id=chat_id, status=400, description=CHAT_NOT_FOUND, times=None)

    def clear_faults(self) -> None:
        self._faults.clear()

    # -- internals
    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait(self, predicate: Callable[[], Any], seconds: float) -> None:
        async with asyncio.timeout(seconds):
            while not predicate():
                await self._changed.wait()

    def _take_fault(self, method: str, chat_id: Any) -> Fault | None:
        for fault in self._faults:
            if fault.method not in (None, method) and fault.method.lower() != method.lower():
                continue
            if fault.chat_id not in (None, chat_id):
                continue
            if fault.times is not None:
                fault.times -= 1
                if fault.times <= 0:
                    self._faults.remove(fault)
            return fault
        return None

    @staticmethod
    def _decode(form: Any) -> dict[str, Any]:
        params: dict[str, Any] = {}
        for key, value in form.items():
            if isinstance(value, web.FileField):
                params[key] = {"filename": value.filename, "content": value.file.read()}
            elif key in STR_FIELDS or not isinstance(value, str):
                params[key] = value
            else:
                try:
                    params[key] = json.loads(value)
                except ValueError:
                    params[key] = value
        return params

    async def _handle(self, request: web.Request) -> web.Response:
        method, token = request.match_info["method"], request.match_info["token"]
        self.tokens.add(token)
        body = await (
            request.json() if request.content_type == "application/json" else request.post()
        )
        call = Call(method, self._decode({**request.query, **body}), token=token)
        if self.delay and method.lower() == "sendmessage":
            await asyncio.sleep(self.delay)  # recorded once answered; call.at is the arrival
        self.calls.append(call)
        chat_id = call.params.get("chat_id")
        try:
            if fault := self._take_fault(method, chat_id):
                if fault.status == 0:
                    call.status = 0
                    assert request.transport is not None
                    request.transport.close()  # client sees ServerDisconnectedError
                    return web.Response()
                raise ApiError(fault.status, fault.description, fault.retry_after)
            if chat_id is not None and self.strict_chats and chat_id not in self.known_chats:
                raise ApiError(400, CHAT_NOT_FOUND)
            handler = self._methods.get(method.lower(), lambda p: True)
            result = handler(call.params)
            call.result = await result if asyncio.iscoroutine(result) else result
        except ApiError as e:
            call.status, call.description = e.status, e.description
            payload: dict = {"ok": False, "error_code": e.status, "description": e.description}
            if e.retry_after is not None:
                payload["parameters"] = {"retry_after": e.retry_after}
            return web.json_response(payload, status=e.status)
        finally:
            self._notify()
        return web.json_response({"ok": True, "result": call.result})

    async def _get_updates(self, p: dict) -> list[dict]:
        offset = p.get("offset") or 0
        if offset < 0:
            self._updates = self._updates[offset:]
        elif offset:
            self._updates = [u for u in self._updates if u["update_id"] >= offset]
        with contextlib.suppress(TimeoutError):
            await self._wait(lambda: self._updates or self._closing, p.get("timeout") or 0)
        return self._updates[: p.get("limit") or 100]

    def _set_webhook(self, p: dict) -> bool:
        self.webhook_url = p.get("url", "")
        return True

    def _delete_webhook(self, p: dict) -> bool:
        self.webhook_url = ""
        if p.get("drop_pending_updates"):
            self._updates.clear()
        return True

    def _set_commands(self, p: dict) -> bool:
        self.commands[p.get("language_code", "")] = p.get("commands", [])
        return True

    def _delete_commands(self, p: dict) -> bool:
        self.commands.pop(p.get("language_code", ""), None)
        return True

    def _send_message(self, p: dict) -> dict:
        chat_id, text = self._chat_id(p), self._check_text(p)
        self._check_markup(p)
        message_id = self._next_message_id(chat_id)
        chat_type = "private" if chat_id > 0 else "group"
        msg = {
            "message_id": message_id,
            "date": int(time.time()),
            "from": BOT_USER,
            "chat": {"id": chat_id, "type": chat_type},
            "text": text,
        }
        if (markup := p.get("reply_markup")) and "inline_keyboard" in markup:
            msg["reply_markup"] = markup
        self.messages[(chat_id, message_id)] = msg
        self._contents[(chat_id, message_id)] = ((p.get("text"), p.get("parse_mode")), markup)
        return msg

    def _edit(self, p: dict, text: str | None) -> dict | bool:
        self._check_markup(p)
        if "inline_message_id" in p:
            return True
        key = (self._chat_id(p), p.get("message_id"))
        markup = p.get("reply_markup")
        old = self._contents.get(key)
        raw = (p.get("text"), p.get("parse_mode")) if text is not None else old and old[0]
        if old == (content := (raw, markup)):
            raise ApiError(400, NOT_MODIFIED)
        msg = dict(
            self.messages.get(key)
            or {"message_id": key[1], "from": BOT_USER, "chat": {"id": key[0], "type": "private"}}
        )
        msg.update(date=msg.get("date", int(time.time())), edit_date=int(time.time()))
        if text is not None:
            msg["text"] = text
        msg.pop("reply_markup", None)
        if markup and "inline_keyboard" in markup:
            msg["reply_markup"] = markup
        self.messages[key], self._contents[key] = msg, content
        return msg

    @staticmethod
    def _chat_id(p: dict) -> int:
        chat_id = p.get("chat_id")
        if not isinstance(chat_id, int) or isinstance(chat_id, bool):
            raise ApiError(400, CHAT_NOT_FOUND)
        return chat_id

    def _check_text(self, p: dict) -> str:
        text = p.get("text") or ""
        plain = text
        if str(p.get("parse_mode") or "").lower() == "html":
            try:
                plain = parse_html(text)
            except ValueError as e:
                raise ApiError(400, f"Bad Request: can't parse entities: {e}") from None
        if not plain.strip():
            raise ApiError(400, "Bad Request: message text is empty")
        if len(plain) > MAX_TEXT_LENGTH:
            raise ApiError(400, "Bad Request: message is too long")
        return plain

    @staticmethod
    def _check_markup(p: dict) -> None:
        markup = p.get("reply_markup")
        rows = markup.get("inline_keyboard", []) if isinstance(markup, dict) else []
        for button in itertools.chain.from_iterable(rows):
            if len(str(button.get("callback_data", "")).encode()) > 64:
                raise ApiError(400, "Bad Request: BUTTON_DATA_INVALID")

    def _next_message_id(self, chat_id: int) -> int:
        return next(self._message_ids.setdefault(chat_id, itertools.count(1)))

    @staticmethod
    def _user(chat_id: int, user_id: int | None, first_name: str, language_code: str) -> dict:
        return {
            "id": user_id or chat_id,
            "is_bot": False,
            "first_name": first_name,
            "language_code": language_code,
        }
