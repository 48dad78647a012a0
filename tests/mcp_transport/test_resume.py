"""Resuming a stored stream with Last-Event-ID, on the sync protocol."""

import pytest

from mcp_transport.protocol import HttpFailure, handle_get
from tests.mcp_transport.sync_client import (
    rpc,
)

pytestmark = pytest.mark.django_db


# --- resuming streams -----------------------------------------------------------------------


def _sse_reply(client, chatty, steps=2):
    params = {"name": chatty, "arguments": {"progress": steps}, "_meta": {"progressToken": "t"}}
    reply = client.post(rpc("tools/call", params))
    assert reply.stream_id
    return reply


def test_get_with_last_event_id_replays_the_rest(mcp, chatty):
    reply = _sse_reply(mcp, chatty)
    resumed = handle_get(headers=mcp.headers(**{"last-event-id": reply.events[1][0]}))
    assert resumed.session_id == mcp.session_id and resumed.stream_id == reply.stream_id
    assert [(i, d) for i, d, _ in resumed.events] == reply.events[2:]
    assert [final for _, _, final in resumed.events] == [False, True]
    assert resumed.complete is True
    assert resumed.last_seq == 3


def test_get_with_last_event_id_of_the_priming_event_replays_everything(mcp, chatty):
    reply = _sse_reply(mcp, chatty)
    resumed = handle_get(headers=mcp.headers(**{"last-event-id": reply.events[0][0]}))
    assert [(i, d) for i, d, _ in resumed.events] == reply.events[1:]


def test_resuming_after_the_final_event_is_complete(mcp, chatty):
    """A stream that already ended is reported complete, so it is not followed again."""
    reply = _sse_reply(mcp, chatty)
    resumed = handle_get(headers=mcp.headers(**{"last-event-id": reply.events[-1][0]}))
    assert resumed.events == []
    assert resumed.complete is True


def test_get_does_not_replay_another_sessions_stream(mcp, mcp_for, user, chatty):
    reply = _sse_reply(mcp, chatty)
    other = mcp_for(user)
    with pytest.raises(HttpFailure) as failure:
        handle_get(headers=other.headers(**{"last-event-id": reply.events[0][0]}))
    assert failure.value.status == 404


def test_get_of_an_unknown_stream_is_404(mcp):
    with pytest.raises(HttpFailure) as failure:
        handle_get(headers=mcp.headers(**{"last-event-id": "0123456789abcdef-0"}))
    assert failure.value.status == 404


def test_get_without_last_event_id_opens_the_session_stream(mcp):
    opened = handle_get(headers=mcp.headers())
    assert (opened.session_id, opened.stream_id, opened.events) == (mcp.session_id, None, [])


@pytest.mark.parametrize("last_event_id", ["garbage", "abc-", "-3", "abc-x1", "a" * 40 + "-1"])
def test_malformed_last_event_id_is_400(mcp, last_event_id):
    with pytest.raises(HttpFailure) as failure:
        handle_get(headers=mcp.headers(**{"last-event-id": last_event_id}))
    assert failure.value.status == 400


def test_last_event_id_with_a_non_ascii_digit_is_400(mcp):
    # "²" is a latin-1 byte (0xB2) an HTTP header can carry, and str.isdigit() accepts it.
    with pytest.raises(HttpFailure) as failure:
        handle_get(headers=mcp.headers(**{"last-event-id": "abcdef-²"}))
    assert failure.value.status == 400


def test_last_event_id_with_a_sequence_never_issued_is_400(mcp, chatty):
    reply = _sse_reply(mcp, chatty)
    with pytest.raises(HttpFailure) as failure:
        handle_get(headers=mcp.headers(**{"last-event-id": f"{reply.stream_id}-{10**30}"}))
    assert failure.value.status == 400


def test_get_checks_the_protocol_version_header(mcp):
    with pytest.raises(HttpFailure) as failure:
        handle_get(headers=mcp.headers(**{"mcp-protocol-version": "1999-01-01"}))
    assert failure.value.status == 400
