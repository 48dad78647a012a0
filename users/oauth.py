"""QMCP as an OAuth 2.1 authorization server for MCP clients (django-oauth-toolkit).

The library issues and stores the tokens; this module holds what QMCP adds: its scopes
(ApiToken.Scope, the one list), the MCP resource a token must be bound to (RFC 8707), the
principal of an OAuth access token, and the consent audit trail (:class:`OAuthEvent`).
"""

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone
from oauth2_provider.models import AccessToken, Application, RefreshToken
from oauth2_provider.scopes import BaseScopes
from oauth2_provider.settings import oauth2_settings

from qmcp_site.errors import ApplicationError
from users.models import ApiToken, OAuthEvent, User, hash_token
from users.principals import Principal

MCP_PATH = "/mcp"
RESOURCE_METADATA_PATH = "/.well-known/oauth-protected-resource"


class QmcpScopes(BaseScopes):
    """The OAuth scopes are QMCP's token scopes; a client asking for none gets the defaults
    of ``create_api_token`` (read and call tools)."""

    def get_all_scopes(self):
        return dict(ApiToken.Scope.choices)

    def get_available_scopes(self, application=None, request=None, *args, **kwargs):
        return list(ApiToken.Scope.values)

    def get_default_scopes(self, application=None, request=None, *args, **kwargs):
        return [ApiToken.Scope.TOOLS_READ, ApiToken.Scope.TOOLS_CALL]


def public_origin(host: str) -> str:
    """The origin clients reach QMCP at, for a request's (already validated) Host."""
    return f"{'https' if settings.QMCP_HTTPS else 'http'}://{host}"


def mcp_resource(host: str) -> str:
    """The canonical URI of the MCP endpoint (RFC 8707 resource, RFC 9728 ``resource``)."""
    return public_origin(host) + MCP_PATH


def mcp_resource_metadata_url(host: str) -> str:
    """Where the MCP endpoint's protected-resource metadata is (RFC 9728, path form)."""
    return public_origin(host) + RESOURCE_METADATA_PATH + MCP_PATH


def _access_tokens():
    """Access tokens people granted; not the registration tokens DOT issues to clients
    registered dynamically (RFC 7592), which are stored as access tokens too."""
    return AccessToken.objects.exclude(scope=oauth2_settings.DCR_REGISTRATION_SCOPE)


def oauth_token_find(*, secret: str) -> AccessToken | None:
    """The stored access token of a bearer secret (looked up by its SHA-256), or None."""
    # DOT's token_checksum is the SHA-256 hex digest, as users.models.hash_token.
    return (
        _access_tokens()
        .select_related("application", "user")
        .filter(token_checksum=hash_token(secret))
        .first()
    )


def oauth_token_principal(*, token: AccessToken, resource: str | None) -> Principal:
    """The principal of an OAuth access token used on ``resource``; ``unauthenticated``
    when it has expired, its user is inactive, or it was issued for another resource.

    A token bound to no resource is accepted only where ``resource`` is None (the REST
    APIs); /mcp requires the binding its clients are told to ask for.
    """
    if token.is_expired():
        raise ApplicationError("This OAuth access token has expired.", "unauthenticated")
    if token.user is None or not token.user.is_active:
        raise ApplicationError("The token's user is inactive.", "unauthenticated")
    if resource is not None and not (token.resource and token.allows_audience(resource)):
        raise ApplicationError(
            "This OAuth access token was issued for another resource.", "unauthenticated"
        )
    scopes = frozenset(token.scope.split()) & frozenset(ApiToken.Scope.values)
    return Principal(user=token.user, oauth_token=token, scopes=scopes)


def oauth_client_principal(*, user: User, application_id: int) -> Principal:
    """The principal of a call made earlier through OAuth client ``application_id``, if
    the user's consent to it still stands (a live refresh or access token); its scopes are
    those the live tokens carry. ``unauthenticated`` otherwise."""
    now = timezone.now()
    scopes: set[str] = set()
    live = _access_tokens().filter(user=user, application_id=application_id, expires__gt=now)
    for scope in live.values_list("scope", flat=True):
        scopes.update(scope.split())
    refresh = RefreshToken.objects.filter(
        user=user, application_id=application_id, revoked__isnull=True
    ).select_related("access_token")
    for token in refresh:
        if token.access_token is not None:
            scopes.update(token.access_token.scope.split())
    if not live.exists() and not refresh.exists():
        raise ApplicationError(
            "The caller's access through this OAuth client has been revoked.", "unauthenticated"
        )
    application = Application.objects.filter(pk=application_id).first()
    return Principal(
        user=user,
        oauth_application=application,
        scopes=frozenset(scopes) & frozenset(ApiToken.Scope.values),
    )


def oauth_event_record(
    *,
    kind: str,
    user: User | None,
    application: Application,
    actor: User | None,
    scopes: str = "",
    redirect_uri: str = "",
) -> OAuthEvent:
    """Writes one row of the consent audit trail."""
    return OAuthEvent.objects.create(
        kind=kind,
        user=user,
        user_label=user.email if user is not None else "",
        application=application,
        client_id=application.client_id[:255],
        client_name=(application.name or "")[:255],
        scopes=scopes[:255],
        redirect_uri=redirect_uri,
        actor=actor,
    )


def oauth_client_revoke(*, user: User, application: Application, actor: User) -> int:
    """Ends ``user``'s access through ``application``: every access and refresh token and
    pending code of that pair goes, and the revocation is audited. Returns how many tokens
    were revoked. Staff with ``oauth2_provider.delete_accesstoken`` may revoke for anyone;
    others only their own."""
    if actor.pk != user.pk and not actor.has_perm("oauth2_provider.delete_accesstoken"):
        raise ApplicationError("You may only revoke your own clients.", "forbidden")
    with transaction.atomic():
        count = 0
        for refresh in RefreshToken.objects.filter(
            user=user, application=application, revoked__isnull=True
        ):
            refresh.revoke()
            count += 1
        for access in _access_tokens().filter(user=user, application=application):
            access.revoke()
            count += 1
        application.grant_set.filter(user=user).delete()
        oauth_event_record(
            kind=OAuthEvent.Kind.REVOKED, user=user, application=application, actor=actor
        )
    return count


def oauth_token_revoke(*, token: AccessToken, actor: User | None) -> None:
    """Revokes one access token (and its refresh token), audited."""
    with transaction.atomic():
        user, application, scopes = token.user, token.application, token.scope
        refresh = RefreshToken.objects.filter(access_token=token, revoked__isnull=True).first()
        if refresh is not None:
            refresh.revoke()
        else:
            token.revoke()
        oauth_event_record(
            kind=OAuthEvent.Kind.TOKEN_REVOKED,
            user=user,
            application=application,
            actor=actor,
            scopes=scopes,
        )


def oauth_clients_of(*, user: User) -> list[dict]:
    """The clients ``user`` has allowed and that still hold a live token: each with the
    application, the scopes granted, and when it was last authorized."""
    now = timezone.now()
    found: dict[int, dict] = {}
    # A token is alive while it is unexpired, or while its refresh token can renew it.
    renewable = RefreshToken.objects.filter(access_token=OuterRef("pk"), revoked__isnull=True)
    tokens = (
        _access_tokens()
        .filter(user=user, application__isnull=False)
        .filter(Q(expires__gt=now) | Exists(renewable))
        .select_related("application")
        .order_by("created")
    )
    for token in tokens:
        entry = found.setdefault(
            token.application_id,
            {"application": token.application, "scopes": set(), "authorized_at": token.created},
        )
        entry["scopes"].update(token.scope.split())
        entry["authorized_at"] = max(entry["authorized_at"], token.created)
    return [
        {**entry, "scopes": sorted(entry["scopes"])}
        for entry in sorted(found.values(), key=lambda e: e["application"].name or "")
    ]
