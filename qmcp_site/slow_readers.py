"""Clients that do not read their replies are dropped, so what a connection buffers is bounded.

A server writes a reply into the connection's send buffer; a client that never reads keeps
it there. Daphne (Twisted) buffers without bound and never gives up on such a client: 300
connections that asked for large replies and never read them held about 770 MB for ever.
First, the kernel's part is capped: Linux lets a connection's socket buffer grow to 4 MB
(``tcp_wmem``), so each connection's socket gets ``QMCP_SEND_BUFFER_BYTES`` instead; the
rest of a reply waits in Twisted's buffer, where it can be seen. Twisted tells the
connection when its buffer is over 64 KiB (``pauseProducing``) and when it has drained
(``resumeProducing``); between the two, :func:`install` checks every
``QMCP_WRITE_TIMEOUT_SECONDS`` whether any byte went out, and aborts the connection when
none did. A reader that reads slowly but steadily keeps its connection; one that stops is
dropped within one to two timeouts, its buffer is freed, and the freed heap is handed back
to the system. The application sees an ordinary disconnect (``http.disconnect``).

Under uvicorn (production, see the README), :class:`HttpToolsProtocol` does the same with
asyncio's flow control: uvicorn already pauses the application's ``send`` while the
transport's buffer is over its high-water mark, so a connection holds at most one message
beyond it; the protocol adds the socket buffer cap and the drop.

So a connection holds at most what the application wrote to it in the last two timeouts: one
reply, whatever its size (a request body is capped by ``QMCP_MAX_BODY_BYTES``), or the
events of an SSE stream over that time.
"""

import ctypes
import ctypes.util
import logging
import socket
import struct

from django.conf import settings
from uvicorn.protocols.http import httptools_impl

from qmcp_site.head_with_body import HeadWithBody

logger = logging.getLogger(__name__)

_trim_pending = False


def install() -> None:
    """Patches Twisted's HTTP channel as daphne uses it; does nothing twice or without it."""
    try:
        from twisted.web import http
    except ImportError:
        return
    channel = http.HTTPChannel
    if getattr(channel, "_qmcp_write_watch", False):
        return
    made, lost = channel.connectionMade, channel.connectionLost
    pause, resume = channel.pauseProducing, channel.resumeProducing

    def connectionMade(self):
        made(self)
        _cap_send_buffer(getattr(self.transport, "getHandle", lambda: None)())

    def pauseProducing(self):
        pause(self)
        if getattr(self, "_qmcp_stall", None) is None:
            self._qmcp_mark = _progress_mark(self.transport)
            self._qmcp_stall = _later(self)

    def resumeProducing(self):
        _cancel(self)
        resume(self)

    def connectionLost(self, reason):
        _cancel(self)
        lost(self, reason)

    channel.connectionMade = connectionMade
    channel.pauseProducing = pauseProducing
    channel.resumeProducing = resumeProducing
    channel.connectionLost = connectionLost
    channel._qmcp_write_watch = True


def _later(channel):
    from twisted.internet import reactor

    return reactor.callLater(settings.QMCP_WRITE_TIMEOUT_SECONDS, _check, channel)


def _progress_mark(transport) -> tuple:
    """Changes whenever the transport writes a byte: Twisted advances ``offset`` in its
    current buffer, and swaps in a new buffer when that one is sent."""
    return (id(getattr(transport, "dataBuffer", None)), getattr(transport, "offset", None))


def _check(channel) -> None:
    transport = channel.transport
    if transport is None or getattr(transport, "disconnected", False):
        channel._qmcp_stall = None
        return
    mark = _progress_mark(transport)
    if mark != channel._qmcp_mark:
        channel._qmcp_mark = mark
        channel._qmcp_stall = _later(channel)
        return
    channel._qmcp_stall = None
    peer = transport.getPeer()
    logger.warning(
        "Dropped a client that read nothing for %s s: %s", settings.QMCP_WRITE_TIMEOUT_SECONDS, peer
    )
    transport.abortConnection()
    _trim_soon()


def _cancel(channel) -> None:
    stall = getattr(channel, "_qmcp_stall", None)
    if stall is not None:
        if stall.active():
            stall.cancel()
        channel._qmcp_stall = None


def _trim_soon(call_later=None) -> None:
    """Hands freed heap memory back to the system a moment after readers were dropped.

    The memory of a dropped reply is freed, but glibc keeps freed heap pages in the process;
    ``malloc_trim`` returns them (about half of what 50 dropped readers had taken, measured
    with benchmarks/slow_readers.py). Once per burst of drops; nothing without glibc.
    """
    global _trim_pending
    if _trim_pending:
        return
    if call_later is None:
        from twisted.internet import reactor

        call_later = reactor.callLater
    _trim_pending = True
    call_later(1, _trim)


def _trim() -> None:
    global _trim_pending
    _trim_pending = False
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _cap_send_buffer(sock) -> None:
    size = settings.QMCP_SEND_BUFFER_BYTES
    if size and sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
        except OSError:  # not a TCP socket (a Unix socket, say)
            pass


class HttpToolsProtocol(httptools_impl.HttpToolsProtocol):
    """uvicorn's httptools protocol that drops a client that reads nothing for
    ``QMCP_WRITE_TIMEOUT_SECONDS`` (``uvicorn --http qmcp_site.slow_readers:HttpToolsProtocol``),
    and writes each response's head with its body (:mod:`qmcp_site.head_with_body`).
    """

    _stall = None

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.transport is self.transport:  # a new request's cycle
            cycle.transport = HeadWithBody(self.transport, self.loop)

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        _cap_send_buffer(transport.get_extra_info("socket"))

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._stall is None:
            self._mark = self.transport.get_write_buffer_size()
            self._stall = self.loop.call_later(settings.QMCP_WRITE_TIMEOUT_SECONDS, self._check)

    def resume_writing(self) -> None:
        self._cancel_stall()
        super().resume_writing()

    def connection_lost(self, exc) -> None:
        self._cancel_stall()
        super().connection_lost(exc)

    def _check(self) -> None:
        # The application is paused while the buffer is over its high-water mark, so a
        # smaller buffer means bytes went out.
        size = self.transport.get_write_buffer_size()
        if size < self._mark:
            self._mark = size
            self._stall = self.loop.call_later(settings.QMCP_WRITE_TIMEOUT_SECONDS, self._check)
            return
        self._stall = None
        logger.warning(
            "Dropped a client that read nothing for %s s: %s",
            settings.QMCP_WRITE_TIMEOUT_SECONDS,
            self.client,
        )
        # A reset, as Twisted's abortConnection sends: a plain close would leave the unread
        # bytes in the kernel, sent before the FIN that the client never reads up to.
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()
        _trim_soon(self.loop.call_later)

    def _cancel_stall(self) -> None:
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None
