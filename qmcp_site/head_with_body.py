"""A response's status line and headers sent in the same write as its body's first bytes.

uvicorn writes an ASGI response's ``http.response.start`` (the head) at once, then each
``http.response.body``: two ``send`` system calls and two TCP segments for a reply that
fits in one, which on a small machine cost more than the head's parsing and building.
:class:`HeadWithBody` stands in for the connection's transport in one request's cycle and
holds the first thing written (the head) until the next write, which takes both in one
``writelines``. When nothing follows in the same turn of the event loop (an SSE stream's
head, before its first event), the head goes out alone at the end of that turn, so a
client never waits longer for it than before. Everything else goes to the transport as it
is; the order of the bytes is never changed.
"""

import asyncio


class HeadWithBody:
    """The transport of one request's response, whose first write waits for the second
    (at most until the event loop's next turn)."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop):
        self.transport = transport
        self._loop = loop
        self._held: bytes | None = None
        self._first = True

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self.transport.writelines((held, data))
        elif self._first:
            self._first = False
            self._held = data
            self._loop.call_soon(self.flush)
        else:
            self.transport.write(data)

    def flush(self) -> None:
        """Writes what is held, if anything."""
        held, self._held = self._held, None
        if held is not None and not self.transport.is_closing():
            self.transport.write(held)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def __getattr__(self, name: str):
        return getattr(self.transport, name)
