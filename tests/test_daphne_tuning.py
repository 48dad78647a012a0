"""The two per-request costs of daphne's Twisted stack that qmcp_site.daphne_tuning removes."""

from daphne.http_protocol import HTTPFactory
from twisted.web import http
from twisted.web.test.requesthelper import DummyChannel

from qmcp_site.daphne_tuning import tune

tune()


def test_the_content_type_parse_is_cached_and_gives_twisteds_answers():
    parse = http._parseContentType
    original = parse.__wrapped__
    for value in (
        b"application/json",
        b"Application/JSON; charset=utf-8",
        b"multipart/form-data; boundary=xyz",
        b"application/x-www-form-urlencoded",
        b"not a type",
    ):
        assert parse(value) == original(value)
    hits = parse.cache_info().hits
    parse(b"application/json")
    assert parse.cache_info().hits == hits + 1


def test_tuning_twice_caches_once():
    tune()
    assert not hasattr(http._parseContentType.__wrapped__, "cache_info")


def test_daphnes_factory_writes_no_twisted_access_line():
    written = []
    factory = HTTPFactory.__new__(HTTPFactory)
    http.HTTPFactory.__init__(factory)  # Twisted's part; daphne's needs a server
    factory._logFile = type("LogFile", (), {"write": staticmethod(written.append)})()
    request = http.Request(DummyChannel())
    request.method, request.uri, request.clientproto = b"POST", b"/mcp", b"HTTP/1.1"
    factory.log(request)
    assert written == []
    http.HTTPFactory.log(factory, request)  # what Twisted itself would do
    assert len(written) == 1 and '"POST /mcp HTTP/1.1"' in written[0]
