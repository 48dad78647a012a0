"""qmcp_site.head_with_body: a response's head goes out in the same write as its body."""

import asyncio

from qmcp_site.head_with_body import HeadWithBody


class Recorder:
    """A transport that records each write call as the list of what it was given."""

    def __init__(self):
        self.calls: list[list[bytes]] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.calls.append([data])

    def writelines(self, lines) -> None:
        self.calls.append(list(lines))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str):
        return f"extra {name}"


def test_the_head_and_the_body_written_in_one_turn_go_out_in_one_call():
    async def respond():
        transport = Recorder()
        wrapped = HeadWithBody(transport, asyncio.get_running_loop())
        wrapped.write(b"HTTP/1.1 200 OK\r\n\r\n")
        assert transport.calls == []  # held
        wrapped.write(b"body")
        wrapped.write(b"more")
        await asyncio.sleep(0)  # the flush finds nothing held
        return transport.calls

    assert asyncio.run(respond()) == [[b"HTTP/1.1 200 OK\r\n\r\n", b"body"], [b"more"]]


def test_a_head_alone_goes_out_at_the_end_of_the_loop_turn():
    async def stream_head():
        transport = Recorder()
        wrapped = HeadWithBody(transport, asyncio.get_running_loop())
        wrapped.write(b"head")
        await asyncio.sleep(0)
        first = list(transport.calls)
        wrapped.write(b"event")
        return first, transport.calls

    first, calls = asyncio.run(stream_head())
    assert first == [[b"head"]] and calls == [[b"head"], [b"event"]]


def test_close_sends_what_is_held_first_and_the_rest_is_the_transports():
    async def close_early():
        transport = Recorder()
        wrapped = HeadWithBody(transport, asyncio.get_running_loop())
        wrapped.write(b"head")
        wrapped.close()
        await asyncio.sleep(0)
        return transport, wrapped

    transport, wrapped = asyncio.run(close_early())
    assert transport.calls == [[b"head"]] and transport.closed
    assert wrapped.get_extra_info("peername") == "extra peername"
