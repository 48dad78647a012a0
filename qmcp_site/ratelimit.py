"""Request rate limits per API token and per client address, for MCP and the REST APIs.

Counting is the ``limits`` library's sliding window counter (a smooth limit in O(1) memory
per key), in Redis when ``QMCP_RATELIMIT_STORAGE`` (by default ``REDIS_URL``) names one, so
every worker shares the counts; otherwise in each process's memory. The sync API serves
Django (:class:`RateLimitMiddleware`), the async one the MCP consumer; both count in the
same keys, so a token has one budget across MCP, ``/v1`` and ``/api``.

A token is keyed by the digest of the presented secret, before any database lookup: made-up
tokens cost nothing to refuse, and the per-address limit catches a caller who rotates them.
Behind a reverse proxy, the ASGI server must put the client's address in the scope (uvicorn's
``FORWARDED_ALLOW_IPS``, daphne's ``--proxy-headers``), not the proxy's.

If the storage fails (Redis down), requests are let through and the failure is logged: the
limiter protects the service and must not become the reason it is down.

Memory storage is the library's, with its expired keys swept on a hit at most once a
second (:class:`SweptMemoryStorage`) instead of by a new timer thread every 10 ms.
"""

import asyncio
import logging
import math
import threading
import time
import weakref
from dataclasses import dataclass

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.http import HttpResponse, JsonResponse
from limits import RateLimitItem, parse_many
from limits import strategies as sync_strategies
from limits.aio import strategies as async_strategies
from limits.storage import MemoryStorage, storage_from_string

from qmcp_site.errors import error_body
from users.models import hash_token

logger = logging.getLogger(__name__)

KEY_PREFIX = "qmcp:ratelimit"
# Paths of the REST APIs; MCP calls the limiter itself, and the admin only for its login.
LIMITED_PREFIXES = ("/v1/", "/api/")
LOGIN_PATH = "/admin/login/"
# The OAuth endpoints a client may hit without a token: counted per address (scope "oauth").
OAUTH_PATHS = ("/oauth/token/", "/oauth/register/")
# See Credits.
CREDIT_SECONDS = 1.0  # unused credits lapse after this
CREDIT_SPAN = 0.1  # a batch is sized to last this long at the key's recent pace
CREDIT_MAX = 1000  # the most taken at once (never more than a hundredth of the limit)
# Bounded waits on Redis: a slow store must not hold requests for long.
REDIS_OPTIONS = {"socket_timeout": 0.5, "socket_connect_timeout": 0.5}


ATTEMPTS = {"login": "login attempts", "oauth": "OAuth token or registration requests"}


@dataclass(frozen=True)
class Refusal:
    """A request over a limit: which one, and the whole seconds until it may be retried."""

    scope: str
    retry_after: int

    @property
    def message(self) -> str:
        return (
            f"Rate limit exceeded for this {self.scope}; retry in {self.retry_after} s."
            if self.scope not in ("login", "oauth")
            else f"Too many {ATTEMPTS[self.scope]} from this address; "
            f"retry in {self.retry_after} s."
        )

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


def bearer_secret(authorization: str) -> str:
    """The secret of an ``Authorization: Bearer`` header value; empty for anything else."""
    scheme, _, secret = (authorization or "").partition(" ")
    return secret.strip() if scheme.lower() == "bearer" else ""


class RateLimiter:
    """The configured limits over one storage; :meth:`check` and :meth:`acheck` count a
    request and say whether it is over a limit."""

    def __init__(self, *, storage_uri: str, token: str, address: str, login: str, oauth=""):
        self.rules: dict[str, list[RateLimitItem]] = {
            "token": parse_many(token) if token else [],
            "address": parse_many(address) if address else [],
            "login": parse_many(login) if login else [],
            "oauth": parse_many(oauth) if oauth else [],
        }
        self.storage_uri = storage_uri or "memory://"
        self.is_redis = self.storage_uri.startswith(("redis", "rediss"))
        if self.storage_uri == "memory://":
            storage = SweptMemoryStorage()
        else:
            options = REDIS_OPTIONS if self.is_redis else {}
            storage = storage_from_string(self.storage_uri, key_prefix=KEY_PREFIX, **options)
        self.sync = sync_strategies.SlidingWindowCounterRateLimiter(storage)
        self.credits = Credits()
        # Redis clients belong to one event loop; memory storage is shared by both APIs,
        # so MCP and Django count together in one process.
        self._async: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def _checks(self, *, address: str, authorization: str, login: bool) -> list[tuple]:
        """The (limit, scope, key) a request counts against. ``login`` is False, True (an
        admin login) or "oauth" (the OAuth token and registration endpoints)."""
        if login:
            scope = "oauth" if login == "oauth" else "login"
            return [(item, scope, address) for item in self.rules[scope]]
        checks = [(item, "address", address) for item in self.rules["address"]]
        secret = bearer_secret(authorization)
        if secret:
            digest = hash_token(secret)[:32]
            checks[:0] = [(item, "token", digest) for item in self.rules["token"]]
        return checks

    def check(self, *, address: str, authorization: str = "", login=False) -> Refusal | None:
        """Counts one request; a :class:`Refusal` when it is over a limit."""
        try:
            for item, scope, key in self._checks(
                address=address, authorization=authorization, login=login
            ):
                if self.credits.take(item, scope, key):
                    continue
                batch = self.credits.next_batch(item, scope, key)
                if batch > 1 and self.sync.hit(item, scope, key, cost=batch):
                    self.credits.taken(item, scope, key, batch)
                elif self.sync.hit(item, scope, key):
                    self.credits.taken(item, scope, key, 1)
                else:
                    reset = self.sync.get_window_stats(item, scope, key).reset_time
                    return _refusal(scope, reset)
        except Exception:
            logger.warning("Rate limit storage failed; request let through", exc_info=True)
        return None

    async def acheck(self, *, address: str, authorization: str = "", login=False) -> Refusal | None:
        """See check()."""
        if not self.is_redis:
            return self.check(address=address, authorization=authorization, login=login)
        limiter = self._async_limiter()
        try:
            for item, scope, key in self._checks(
                address=address, authorization=authorization, login=login
            ):
                if self.credits.take(item, scope, key):
                    continue
                batch = self.credits.next_batch(item, scope, key)
                if batch > 1 and await limiter.hit(item, scope, key, cost=batch):
                    self.credits.taken(item, scope, key, batch)
                elif await limiter.hit(item, scope, key):
                    self.credits.taken(item, scope, key, 1)
                else:
                    reset = (await limiter.get_window_stats(item, scope, key)).reset_time
                    return _refusal(scope, reset)
        except Exception:
            logger.warning("Rate limit storage failed; request let through", exc_info=True)
        return None

    def _async_limiter(self) -> async_strategies.SlidingWindowCounterRateLimiter:
        loop = asyncio.get_running_loop()
        limiter = self._async.get(loop)
        if limiter is None:
            storage = storage_from_string(
                f"async+{self.storage_uri}",
                key_prefix=KEY_PREFIX,
                implementation="redispy",
                **REDIS_OPTIONS,
            )
            limiter = async_strategies.SlidingWindowCounterRateLimiter(storage)
            self._async[loop] = limiter
        return limiter


class SweptMemoryStorage(MemoryStorage):
    """The ``limits`` memory storage, counting exactly as it does, whose expired keys are
    dropped on a hit at most every ``SWEEP_SECONDS``.

    The library sweeps them in a ``threading.Timer`` of 10 ms that each hit starts anew
    once the last one has run: under steady traffic, a thread started every 10 ms or so,
    and each start holds the event loop until the new thread gets the GIL. A read never
    sees an expired count either way (``get`` drops it); the sweep only bounds memory.
    The hook overridden is the library's private ``__schedule_expiry`` (limits 5.8, pinned;
    ``tests/test_ratelimit.py`` notices a change).
    """

    SWEEP_SECONDS = 1.0

    def __init__(self):
        super().__init__()
        self._swept_at = time.monotonic()

    def _MemoryStorage__schedule_expiry(self) -> None:
        now = time.monotonic()
        if now - self._swept_at >= self.SWEEP_SECONDS:
            self._swept_at = now
            self._MemoryStorage__expire_events()


class Credits:
    """Hits of a busy key taken from the storage several at a time, so that one count serves
    several requests of this process: a Redis round trip costs more CPU than a whole MCP
    call, and the library's bookkeeping for one hit in memory about a tenth of one.

    A key is busy when it used up its last credits less than ``CREDIT_SECONDS`` after taking
    them. Its next batch is what it used in ``CREDIT_SPAN`` at that pace, at most twice the
    last one, ``CREDIT_MAX`` and a hundredth of the limit (so small limits stay exact): a
    key takes from the storage about ten times a second, however busy. Unused credits lapse
    after ``CREDIT_SECONDS``, so a process counts at most a tenth of a second of a key's
    traffic, or a hundredth of its limit, that was never made (never fewer hits than were
    made); near the limit, hits are taken one by one. Django's threads and the event loop
    share the credits, so each use is taken under a lock.
    """

    def __init__(self):
        # (id of the limit, scope, key) -> (credits left, taken at, how many were taken).
        # The limits are the limiter's own, alive as long as these credits: their ids are
        # cheaper to hash than the items (whose __hash__ is Python code).
        self._keys: dict[tuple, tuple[int, float, int]] = {}
        self._lock = threading.Lock()

    def take(self, item: RateLimitItem, scope: str, key: str) -> bool:
        """Uses a credit of the key, if it has one."""
        with self._lock:
            entry = self._keys.get((id(item), scope, key))
            if entry is None or entry[0] <= 0 or time.monotonic() - entry[1] > CREDIT_SECONDS:
                return False
            self._keys[(id(item), scope, key)] = (entry[0] - 1, entry[1], entry[2])
            return True

    def next_batch(self, item: RateLimitItem, scope: str, key: str) -> int:
        """How many hits to take now: several for a busy key, else one."""
        entry = self._keys.get((id(item), scope, key))
        lasted = CREDIT_SECONDS if entry is None else time.monotonic() - entry[1]
        if lasted >= CREDIT_SECONDS:
            return 1
        at_pace = round(entry[2] * CREDIT_SPAN / max(lasted, 1e-6))
        return max(1, min(at_pace, 2 * entry[2], CREDIT_MAX, item.amount // 100))

    def taken(self, item: RateLimitItem, scope: str, key: str, count: int) -> None:
        """``count`` hits of the key were counted just now: one for this request, the rest
        its credits."""
        with self._lock:
            if len(self._keys) > 10_000:
                now = time.monotonic()
                self._keys = {k: v for k, v in self._keys.items() if now - v[1] <= CREDIT_SECONDS}
            self._keys[(id(item), scope, key)] = (count - 1, time.monotonic(), count)


def _refusal(scope: str, reset_time: float) -> Refusal:
    return Refusal(scope=scope, retry_after=max(1, math.ceil(reset_time - time.time())))


_limiter: RateLimiter | None = None
# Django serves requests on many threads, and the limits library's first import of its
# Redis client is not safe to race (it then reports redis as missing).
_building = threading.Lock()


def limiter() -> RateLimiter:
    """The process's limiter, built from the settings on first use."""
    global _limiter
    if _limiter is None:
        with _building:
            if _limiter is None:
                _limiter = RateLimiter(
                    storage_uri=settings.QMCP_RATELIMIT_STORAGE,
                    token=settings.QMCP_RATELIMIT_TOKEN,
                    address=settings.QMCP_RATELIMIT_ADDRESS,
                    login=settings.QMCP_RATELIMIT_LOGIN,
                    oauth=settings.QMCP_RATELIMIT_OAUTH,
                )
    return _limiter


@receiver(setting_changed)
def _settings_changed(*, setting, **kwargs):
    global _limiter
    if setting.startswith("QMCP_RATELIMIT_"):
        _limiter = None


def client_address(scope_or_meta) -> str:
    """The peer address of an ASGI scope or a Django ``request.META``."""
    if "REMOTE_ADDR" in scope_or_meta:
        return scope_or_meta["REMOTE_ADDR"] or "unknown"
    client = scope_or_meta.get("client")
    return client[0] if client else "unknown"


class RateLimitMiddleware:
    """Counts ``/v1`` and ``/api`` requests per token and address, and admin login POSTs
    and OAuth token and registration POSTs per address; over a limit, 429 with
    ``Retry-After`` before any view runs (the APIs' ``rate_limited`` error body, plain
    text on the login page)."""

    def __init__(self, get_response):
        self.get_response = get_response
        limiter()  # built once at start-up, not by the first requests at once

    def __call__(self, request):
        path = request.path
        login = path == LOGIN_PATH and request.method == "POST"
        if path in OAUTH_PATHS and request.method == "POST":
            login = "oauth"
        if not (login or path.startswith(LIMITED_PREFIXES)):
            return self.get_response(request)
        refusal = limiter().check(
            address=client_address(request.META),
            authorization=request.headers.get("Authorization", ""),
            login=login,
        )
        if refusal is None:
            return self.get_response(request)
        if login is True:
            return HttpResponse(
                refusal.message, status=429, content_type="text/plain", headers=refusal.headers
            )
        return JsonResponse(
            error_body("rate_limited", refusal.message, {"retry_after": refusal.retry_after}),
            status=429,
            headers=refusal.headers,
        )
