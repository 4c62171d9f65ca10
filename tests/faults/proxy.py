"""A loopback TCP proxy for network faults: pause (hold bytes), drop (reset and refuse) and resume.

There is no ``tc netem`` or toxiproxy here, so the fault tests put this between a client and a broker
that advertises the proxy's port: every byte of every connection then flows through it. It runs its
own asyncio loop in a daemon thread; the test thread controls it with plain method calls.

- ``pause()``: connections stay open but no byte is forwarded (a blackhole: requests time out).
- ``drop()``: every open connection is reset, and new ones are accepted and reset at once (the broker
  is unreachable: clients see transport errors immediately and reconnect with backoff).
- ``resume()``: bytes flow again and new connections are served (held bytes are delivered).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Coroutine
from typing import Any

CHUNK = 65536


class TcpProxy:
    def __init__(self, target_port: int, listen_port: int = 0, host: str = "127.0.0.1") -> None:
        self.host, self.target_port, self._listen_port = host, target_port, listen_port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy", daemon=True)
        self._connections: set[asyncio.StreamWriter] = set()
        self._server: asyncio.base_events.Server | None = None
        self._flowing: asyncio.Event | None = None
        self._dropped = False
        self.accepted = 0
        self.refused = 0

    # ------------------------------------------------------------------ control (test thread)
    def start(self) -> int:
        self._thread.start()
        self.port = self._call(self._start())
        return self.port

    def pause(self) -> None:
        self._call(self._set(flowing=False))

    def drop(self) -> None:
        self._call(self._drop())

    def resume(self) -> None:
        self._call(self._set(flowing=True, dropped=False))

    def close(self) -> None:
        if self._thread.is_alive():
            self._call(self._close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
        self._loop.close()

    def _call(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=10)

    # ------------------------------------------------------------------ the loop
    async def _start(self) -> int:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, self.host, self._listen_port, reuse_address=True)
        return int(self._server.sockets[0].getsockname()[1])

    async def _set(self, flowing: bool, dropped: bool | None = None) -> None:
        assert self._flowing is not None
        if dropped is not None:
            self._dropped = dropped
        if flowing:
            self._flowing.set()
        else:
            self._flowing.clear()

    async def _drop(self) -> None:
        self._dropped = True
        for writer in list(self._connections):
            _reset(writer)
        self._connections.clear()
        assert self._flowing is not None
        self._flowing.set()  # nothing is held any more: the pumps see their connections closed and end

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._connections):
            _reset(writer)
        self._connections.clear()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if self._dropped:
            self.refused += 1
            _reset(client_writer)
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(self.host, self.target_port)
        except OSError:
            _reset(client_writer)
            return
        self.accepted += 1
        self._connections.update((client_writer, upstream_writer))
        await asyncio.gather(
            self._pump(client_reader, upstream_writer, client_writer),
            self._pump(upstream_reader, client_writer, upstream_writer),
            return_exceptions=True,
        )
        for writer in (client_writer, upstream_writer):
            self._connections.discard(writer)
            _reset(writer)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: asyncio.StreamWriter
    ) -> None:
        assert self._flowing is not None
        try:
            while True:
                data = await reader.read(CHUNK)
                if not data:
                    break
                await self._flowing.wait()  # paused: hold this chunk (and, through TCP, everything behind it)
                if writer.is_closing():
                    break
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            _reset(peer)  # one side gone: the other goes too, as with a real broken connection


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0), as a broken network path or a dead host would."""
    transport = writer.transport
    if transport.is_closing():
        return
    sock = transport.get_extra_info("socket")
    with contextlib.suppress(OSError):
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    transport.abort()
