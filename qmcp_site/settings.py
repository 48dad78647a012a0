"""QMCP settings: everything comes from the environment, and nothing needs to be set.

With no variables: SQLite (WAL) in the project folder, the in-memory channel layer, eager
Celery. ``DATABASE_URL``, ``REDIS_URL`` and ``CELERY_BROKER_URL`` switch to real services.
``DEBUG`` is off unless ``DJANGO_DEBUG=1``; with it off, ``SECRET_KEY`` must be set.
"""

import os
import secrets
import warnings
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from qmcp_site.env import env_bool

BASE_DIR = Path(__file__).resolve().parent.parent


def env_list(name: str, default: list[str]) -> list[str]:
    value = os.environ.get(name)
    if not value:
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


def _local_secret_key() -> str:
    """A per-checkout key for development, kept out of the repository."""
    path = BASE_DIR / ".local_secret_key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(50))
    return path.read_text().strip()


DEBUG = env_bool("DJANGO_DEBUG")
SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY must be set when DEBUG is off (set DJANGO_DEBUG=1 for development)."
        )
    SECRET_KEY = _local_secret_key()

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",  # OpClass in index expressions (users' trigram indexes)
    "django_prometheus",
    "axes",
    "channels",
    "rest_framework",
    "ninja",
    "oauth2_provider",
    "users",
    "tools",
    "hitl",
    "mcp_transport",
]

MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "qmcp_site.observability.RequestIdMiddleware",
    "qmcp_site.ratelimit.RateLimitMiddleware",
    "qmcp_site.middleware.BodySizeLimitMiddleware",
    "qmcp_site.middleware.StorableQueryMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "qmcp_site.middleware.V1ErrorShapeMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
    # Last, as django-axes asks: it turns a locked-out login into its lockout page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "qmcp_site.urls"
ASGI_APPLICATION = "qmcp_site.asgi.application"
WSGI_APPLICATION = "qmcp_site.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -----------------------------------------------------------------------------
DATABASES = {
    "default": dj_database_url.config(
        default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}",
        conn_max_age=int(os.environ.get("DB_CONN_MAX_AGE", "600")),
        conn_health_checks=env_bool("DB_CONN_HEALTH_CHECKS"),
    )
}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # WAL lets readers run beside one writer; the busy timeout makes writers queue
    # instead of failing with "database is locked".
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 20,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # On-disk test database, as Channels' sample project: async tests and live servers
    # in other processes see the same data.
    DATABASES["default"]["TEST"] = {"NAME": str(BASE_DIR / "test_db.sqlite3")}
if DATABASES["default"]["ENGINE"].endswith("postgresql"):
    # Server-side binding lets psycopg prepare the statements every tool call repeats,
    # so PostgreSQL plans them once per connection instead of on every call.
    DATABASES["default"].setdefault("OPTIONS", {})["server_side_binding"] = env_bool(
        "DB_SERVER_SIDE_BINDING", True
    )
    if env_bool("DB_POOL", True):
        # Under ASGI, Django runs each REST request and page in a thread of its own, so a
        # persistent connection per thread means a new connection per request (5-10 ms, and
        # an idle backend left behind until the thread's objects are collected). A pool
        # lends each thread a connection and takes it back when the request ends.
        DATABASES["default"]["CONN_MAX_AGE"] = 0
        DATABASES["default"]["OPTIONS"]["pool"] = {
            "min_size": int(os.environ.get("DB_POOL_MIN_SIZE", "2")),
            "max_size": int(os.environ.get("DB_POOL_MAX_SIZE", "20")),
            "timeout": float(os.environ.get("DB_POOL_TIMEOUT", "10")),
        }
if os.environ.get("QMCP_TEST_DB_NAME"):
    # Lets two test runs share a machine without sharing a test database.
    DATABASES["default"].setdefault("TEST", {})["NAME"] = os.environ["QMCP_TEST_DB_NAME"]

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_USER_MODEL = "users.User"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
# WhiteNoise serves the admin's and the pages' static files from the apps themselves, so
# daphne alone serves a complete site; `collectstatic` is optional.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG
# Without collectstatic there is no STATIC_ROOT yet, and the finders serve everything.
warnings.filterwarnings("ignore", message="No directory at", category=UserWarning)
LOGIN_URL = "/admin/login/"

# --- Channels, cache ------------------------------------------------------------------------
REDIS_URL = os.environ.get("REDIS_URL", "")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL]},
        }
    }
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# --- Rate limits ----------------------------------------------------------------------------
# Requests allowed per API token and per client address on /mcp, /v1 and /api, and login
# POSTs per address on /admin/login/, in the `limits` notation ("6000/minute", several joined
# by ";"); empty turns one off. Over a limit: 429 with Retry-After. Counted in Redis when
# there is one (shared by every worker), else in each process's memory.
QMCP_RATELIMIT_TOKEN = os.environ.get("QMCP_RATELIMIT_TOKEN", "6000/minute")
QMCP_RATELIMIT_ADDRESS = os.environ.get("QMCP_RATELIMIT_ADDRESS", "12000/minute")
QMCP_RATELIMIT_LOGIN = os.environ.get("QMCP_RATELIMIT_LOGIN", "30/minute")
QMCP_RATELIMIT_STORAGE = os.environ.get("QMCP_RATELIMIT_STORAGE", REDIS_URL or "memory://")

# --- Login lockout (django-axes) -----------------------------------------------------------
# After this many failed logins for one username from one address, that pair is locked out
# of every password login (admin, reviewer pages, /api/auth/) for the cool-off, even with
# the right password; a success resets the count. `manage.py axes_reset` unlocks everyone,
# `axes_reset_username NAME` or `axes_reset_ip_username IP NAME` one.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = int(os.environ.get("QMCP_LOGIN_FAILURE_LIMIT", "5"))
AXES_COOLOFF_TIME = timedelta(minutes=float(os.environ.get("QMCP_LOGIN_COOLOFF_MINUTES", "15")))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
# The login forms post the email as "username", and Django's failure signal keeps that key.
AXES_USERNAME_FORM_FIELD = "username"
AXES_USERNAME_CALLABLE = "qmcp_site.lockout.login_username"
AXES_LOCKOUT_CALLABLE = "qmcp_site.lockout.login_locked_out"

# --- Celery ---------------------------------------------------------------------------------
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "")
CELERY_TASK_ALWAYS_EAGER = not CELERY_BROKER_URL
# An eager task that fails (say, a webhook that is down) must not fail the request that
# queued it; the task records its own outcome.
CELERY_TASK_EAGER_PROPAGATES = False
CELERY_RESULT_BACKEND = None
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TIMEZONE = TIME_ZONE
# A worker running an approved call, and a server process running an MCP async tool (say,
# ask_human waiting for an answer), holds a lease on it for this long and renews it every
# third of it; a run whose lease lapses lost its worker. The recovery pass (beat, every
# QMCP_RUN_RECOVERY_SECONDS, or `manage.py recover_runs`) then ends it failed, or runs a
# retry-safe tool's approved call once more.
QMCP_RUN_LEASE_SECONDS = float(os.environ.get("QMCP_RUN_LEASE_SECONDS", "60"))
QMCP_RUN_RECOVERY_SECONDS = float(os.environ.get("QMCP_RUN_RECOVERY_SECONDS", "20"))

# --- Security -------------------------------------------------------------------------------
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_SAMESITE = "Lax"
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
QMCP_HTTPS = env_bool("QMCP_HTTPS")
if QMCP_HTTPS:
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# --- OAuth 2.1 for MCP clients (django-oauth-toolkit) -------------------------------------
# QMCP is its own authorization server: authorization code with PKCE (S256 only), rotated
# refresh tokens, tokens stored as SHA-256 checksums only, bound to the resource they were
# issued for (RFC 8707). Scopes are ApiToken.Scope's (users.oauth.QmcpScopes).
# Clients register by dynamic client registration (RFC 7591, POST /oauth/register/) when
# QMCP_OAUTH_DCR is on, and by a client ID metadata document (an https client_id whose JSON
# is fetched and cached) when QMCP_OAUTH_CIMD is on; both on by default.
QMCP_OAUTH_DCR = env_bool("QMCP_OAUTH_DCR", True)
QMCP_OAUTH_CIMD = env_bool("QMCP_OAUTH_CIMD", True)
# Requests allowed per client address on the token and registration endpoints.
QMCP_RATELIMIT_OAUTH = os.environ.get("QMCP_RATELIMIT_OAUTH", "60/minute")
# DOT's models are swappable; migrations that point at them need the names set.
OAUTH2_PROVIDER_APPLICATION_MODEL = "oauth2_provider.Application"
OAUTH2_PROVIDER_ACCESS_TOKEN_MODEL = "oauth2_provider.AccessToken"
OAUTH2_PROVIDER = {
    "SCOPES_BACKEND_CLASS": "users.oauth.QmcpScopes",
    # DOT requires SCOPES to be set; QmcpScopes supersedes it.
    "SCOPES": {"tools:read": "Read tools"},
    "DEFAULT_SCOPES": ["tools:read", "tools:call"],
    "PKCE_REQUIRED": True,
    "COMPLIANT_BCP_RFC9700_PKCE_METHOD": True,
    "COMPLIANT_BCP_RFC9700_IMPLICIT_GRANT": True,
    "COMPLIANT_BCP_RFC9700_PASSWORD_GRANT": True,
    "COMPLIANT_BCP_RFC9700_ACCESS_TOKEN_TRANSPORT": True,
    "COMPLIANT_BCP_RFC9700_TOKEN_STORAGE": True,
    "COMPLIANT_BCP_RFC9700_AUTHZ_RESPONSE_ISS": True,
    "COMPLIANT_BCP_RFC9700_REFRESH_TOKEN": True,
    # Native MCP clients receive the code on http://127.0.0.1:<port> (RFC 8252), so http
    # redirect URIs stay allowed: `check --deploy` warns about it instead of failing.
    "COMPLIANT_BCP_RFC9700_REDIRECT_URI_SCHEME": False,
    "COMPLIANT_BCP_RFC9700_REDIRECT_URI_MATCHING": True,
    "COMPLIANT_BCP_RFC9700_PKCE_REQUIRED": True,
    "ROTATE_REFRESH_TOKEN": True,
    "REFRESH_TOKEN_REUSE_PROTECTION": True,
    "AUTHORIZATION_CODE_EXPIRE_SECONDS": 60,
    "ACCESS_TOKEN_EXPIRE_SECONDS": int(os.environ.get("QMCP_OAUTH_ACCESS_SECONDS", "3600")),
    "REFRESH_TOKEN_EXPIRE_SECONDS": int(
        os.environ.get("QMCP_OAUTH_REFRESH_SECONDS", str(30 * 86400))
    ),
    "REQUEST_APPROVAL_PROMPT": "force",
    "OAUTH2_RESPONSE_TYPES_SUPPORTED": ["code"],
    "OAUTH2_GRANT_TYPES_SUPPORTED": ["authorization_code", "refresh_token"],
    "OAUTH2_TOKEN_ENDPOINT_AUTH_METHODS_SUPPORTED": [
        "none",
        "client_secret_post",
        "client_secret_basic",
    ],
    "DCR_ENABLED": QMCP_OAUTH_DCR,
    # Open registration, as MCP clients expect: a registered client gets nothing until a
    # person consents on the authorization page.
    "DCR_REGISTRATION_PERMISSION_CLASSES": ("oauth2_provider.dcr.AllowAllDCRPermission",),
    "CIMD_ENABLED": QMCP_OAUTH_CIMD,
    "OAUTH2_PROTECTED_RESOURCE_NAME": "QMCP",
    "OAUTH2_PROTECTED_RESOURCE_BEARER_METHODS_SUPPORTED": ["header"],
}

# --- REST frameworks ------------------------------------------------------------------------
REST_FRAMEWORK = {
    # Bearer first: an anonymous request then gets 401 with a WWW-Authenticate header.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "qmcp_site.drf.BearerTokenAuthentication",
        "qmcp_site.drf.SessionPrincipalAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["qmcp_site.drf.ScopePermission"],
    "DEFAULT_PAGINATION_CLASS": "qmcp_site.drf.Pagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "qmcp_site.drf.exception_handler",
}
NINJA_PAGINATION_PER_PAGE = 50

# --- QMCP -----------------------------------------------------------------------------------
# Largest request body accepted by the APIs and the MCP endpoint, in bytes.
QMCP_MAX_BODY_BYTES = int(os.environ.get("QMCP_MAX_BODY_BYTES", str(1024 * 1024)))
DATA_UPLOAD_MAX_MEMORY_SIZE = QMCP_MAX_BODY_BYTES
# A client that reads none of its reply for this long (between one and two times it) is
# disconnected, and what was buffered for it freed (see qmcp_site/slow_readers.py).
QMCP_WRITE_TIMEOUT_SECONDS = float(os.environ.get("QMCP_WRITE_TIMEOUT_SECONDS", "30"))
# The kernel's send buffer of each connection, in bytes (the kernel doubles it); 0 leaves
# Linux's autotuning, which lets one connection hold up to 4 MB that no timeout sees.
QMCP_SEND_BUFFER_BYTES = int(os.environ.get("QMCP_SEND_BUFFER_BYTES", str(256 * 1024)))
# Seconds a worker keeps a tool policy in memory; other workers see a change within this.
QMCP_POLICY_CACHE_SECONDS = float(os.environ.get("QMCP_POLICY_CACHE_SECONDS", "1"))
# On PostgreSQL: whether the audit rows that the MCP endpoint writes in groups (those of
# read-only tool calls and of refusals) wait for the WAL flush before the calls are
# answered. Off, a crash of PostgreSQL or of its host may lose the last fraction of a
# second of them, as SQLite's WAL mode may on a power cut; a crash of QMCP loses nothing,
# and MCP throughput rises by about a tenth. Calls that change data always wait.
QMCP_AUDIT_SYNCHRONOUS_COMMIT = env_bool("QMCP_AUDIT_SYNCHRONOUS_COMMIT", True)
# On SQLite: a server process's WAL checkpoints run in a thread of their own this often
# (seconds), instead of in whichever request's commit crosses 1,000 pages (which then
# waits a few milliseconds); 0 leaves them to SQLite (see qmcp_site/sqlite_checkpoints.py).
QMCP_SQLITE_CHECKPOINT_SECONDS = float(os.environ.get("QMCP_SQLITE_CHECKPOINT_SECONDS", "0.5"))
# Fixture tools, resources and prompts of the official MCP conformance suite.
QMCP_CONFORMANCE_FIXTURES = env_bool("QMCP_CONFORMANCE_FIXTURES")

# --- Logging --------------------------------------------------------------------------------
LOG_LEVEL = os.environ.get("LOG_LEVEL", "INFO")
LOG_FORMAT = os.environ.get("LOG_FORMAT", "console" if DEBUG else "json")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        # Django's own console handler would print every django.* record a second time,
        # beside the root handler.
        "django": {"handlers": [], "level": "INFO"},
        "django.db.backends": {"level": "INFO"},
        "daphne": {"level": "WARNING"},
    },
}

from qmcp_site.observability import configure_structlog  # noqa: E402

configure_structlog(json=LOG_FORMAT == "json")

# --- MCP ------------------------------------------------------------------------------------
# An idle MCP session expires after this long; stored SSE events are kept this long.
QMCP_MCP_SESSION_IDLE_SECONDS = int(os.environ.get("QMCP_MCP_SESSION_IDLE_SECONDS", "86400"))
QMCP_MCP_EVENT_RETENTION_SECONDS = int(os.environ.get("QMCP_MCP_EVENT_RETENTION_SECONDS", "3600"))
# Seconds a worker trusts a checked (session, token) pair before checking it again. Closing
# a session or saving a token or user in the same worker takes effect at once.
QMCP_AUTH_CACHE_SECONDS = float(os.environ.get("QMCP_AUTH_CACHE_SECONDS", "1"))
# Email of a user that MCP requests without a token run as (tools:read and tools:call only).
# For local experiments and the conformance suite; leave empty in production.
QMCP_MCP_ANONYMOUS_USER = os.environ.get("QMCP_MCP_ANONYMOUS_USER", "")
# Milliseconds a client should wait before reconnecting to a closed SSE stream.
QMCP_MCP_SSE_RETRY_MS = int(os.environ.get("QMCP_MCP_SSE_RETRY_MS", "500"))
# Bounds per token (or per user, without a token): open sessions, open GET streams (counted
# in the cache, so across workers with Redis), the JSON a session stores (clientInfo,
# capabilities) and its resource subscriptions.
QMCP_MCP_MAX_SESSIONS = int(os.environ.get("QMCP_MCP_MAX_SESSIONS", "100"))
QMCP_MCP_MAX_STREAMS = int(os.environ.get("QMCP_MCP_MAX_STREAMS", "10"))
QMCP_MCP_MAX_SESSION_BYTES = int(os.environ.get("QMCP_MCP_MAX_SESSION_BYTES", "8192"))
QMCP_MCP_MAX_SUBSCRIPTIONS = int(os.environ.get("QMCP_MCP_MAX_SUBSCRIPTIONS", "100"))
# How many of a worker's MCP database threads (8) one token's slow calls may hold at once;
# its further calls wait for one of them to end, so other tokens always find a thread.
QMCP_MCP_THREADS_PER_TOKEN = max(1, int(os.environ.get("QMCP_MCP_THREADS_PER_TOKEN", "2")))

# --- Human in the loop ----------------------------------------------------------------------
CELERY_BEAT_SCHEDULE = {
    "expire-human-requests": {"task": "hitl.tasks.human_requests_expire", "schedule": 30.0},
    "recover-lost-runs": {
        "task": "tools.tasks.tool_invocations_recover",
        "schedule": QMCP_RUN_RECOVERY_SECONDS,
    },
    "purge-mcp-sessions": {"task": "mcp_transport.tasks.sessions_purge", "schedule": 3600.0},
}
# A plain tools/call of a gated tool keeps its SSE stream open this long (below the common
# 60 s client timeout); then the stream closes for a Last-Event-ID resume, or, for clients
# older than 2025-11-25, the call answers "pending approval" with the request to follow.
QMCP_MCP_APPROVAL_WAIT_SECONDS = float(os.environ.get("QMCP_MCP_APPROVAL_WAIT_SECONDS", "45"))
# Optional webhook told of created and decided requests; the body is signed with the secret.
QMCP_WEBHOOK_URL = os.environ.get("QMCP_WEBHOOK_URL", "")
QMCP_WEBHOOK_SECRET = os.environ.get("QMCP_WEBHOOK_SECRET", "")
# Reviewer notifications (hitl/notifications.py): links point at QMCP_SITE_URL; chat goes to
# the reviewer's own incoming webhook or this team one; "expiring" is sent this long before.
QMCP_SITE_URL = os.environ.get("QMCP_SITE_URL", "http://127.0.0.1:8000").rstrip("/")
QMCP_CHAT_WEBHOOK_URL = os.environ.get("QMCP_CHAT_WEBHOOK_URL", "")
QMCP_CHAT_FORMAT = os.environ.get("QMCP_CHAT_FORMAT", "slack")
QMCP_NOTIFY_EXPIRY_WARNING_SECONDS = int(
    os.environ.get("QMCP_NOTIFY_EXPIRY_WARNING_SECONDS", "300")
)
CELERY_BEAT_SCHEDULE["warn-expiring-human-requests"] = {
    "task": "hitl.tasks.human_requests_warn_expiring",
    "schedule": 60.0,
}
# Pending requests past their rule's escalation deadline go to its backup group (once each).
CELERY_BEAT_SCHEDULE["escalate-human-requests"] = {
    "task": "hitl.tasks.human_requests_escalate",
    "schedule": 30.0,
}
# Email: Django's console backend unless EMAIL_BACKEND (and EMAIL_HOST ...) say SMTP.
EMAIL_BACKEND = os.environ.get("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
EMAIL_HOST = os.environ.get("EMAIL_HOST", "localhost")
EMAIL_PORT = int(os.environ.get("EMAIL_PORT", "25"))
EMAIL_HOST_USER = os.environ.get("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = os.environ.get("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS")
EMAIL_TIMEOUT = 10
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", "qmcp@localhost")
