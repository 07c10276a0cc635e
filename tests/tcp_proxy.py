"""A TCP proxy whose cable can be pulled, put between the bot and a real server.

    async with TcpProxy("127.0.0.1", 5432) as proxy:   # the bot connects to proxy.port
        await proxy.unplug()  # live connections cut, new ones refused (nothing listens)
        await proxy.plug()    # listening again on the same port

The bot sees what a crashed or restarted server looks like: connections reset
mid-use, then "connection refused", then a server that answers again.
"""

from __future__ import annotations

import asyncio
import contextlib


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0  # chosen at the first plug(), kept afterwards
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()  # both ends of every live link

    @property
    def plugged(self) -> bool:
        return self._server is not None

    async def __aenter__(self) -> TcpProxy:
        await self.plug()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.unplug()

    async def plug(self) -> None:
        if self._server is None:
            # reuse_address (asyncio's default on Unix): the port is ours again at once.
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
            self.port = self._server.sockets[0].getsockname()[1]

    async def unplug(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()  # stop listening first: no connection slips in meanwhile
        for writer in list(self._links):
            writer.transport.abort()  # a reset, not a polite goodbye
        self._links.clear()
        if server is not None:
            await server.wait_closed()

    async def _serve(
        self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter
    ) -> None:
        ends = [client]
        self._links.add(client)
        try:
            if not self.plugged:  # accepted just before the cable was pulled
                return
            try:
                upstream_reader, upstream = await asyncio.open_connection(*self.target)
            except OSError:
                return
            ends.append(upstream)
            self._links.add(upstream)
            if not self.plugged:
                return
            await asyncio.gather(
                self._pipe(client_reader, upstream), self._pipe(upstream_reader, client)
            )
        finally:
            for writer in ends:
                writer.transport.abort()
                self._links.discard(writer)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        # One side ended: end the other too, as a real connection would.
        writer.transport.abort()
