import secrets
from datetime import datetime, timedelta

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from qmcp_site.errors import ApplicationError
from users.models import ApiToken, User, hash_token
from users.principals import Principal

TOKEN_PREFIX = "qmcp_"
# last_used_at is written at most this often per token, to keep auth off the write path.
LAST_USED_RESOLUTION = timedelta(minutes=1)

PROFILE_FIELDS = (
    "name",
    "surname",
    "email",
    "about_me",
    "phone",
    "date_of_birth",
    "address",
    "gender",
    "company",
    "salary",
)


def _validation_error(exc: ValidationError) -> ApplicationError:
    details = exc.message_dict if hasattr(exc, "error_dict") else {"__all__": exc.messages}
    if any("already exists" in m for msgs in details.values() for m in msgs):
        return ApplicationError("A user with this email already exists.", "conflict", details)
    return ApplicationError("Invalid user data.", "invalid_arguments", details)


def _save_profile(user: User) -> User:
    try:
        user.full_clean(exclude=["password"])
        with transaction.atomic():
            user.save()
    except ValidationError as exc:
        raise _validation_error(exc) from exc
    except IntegrityError as exc:
        raise ApplicationError("A user with this email already exists.", "conflict") from exc
    return user


def user_create(*, email: str, name: str = "", surname: str = "", **profile) -> User:
    """Creates a non-staff user record with an unusable password; the email must be free."""
    unknown = set(profile) - set(PROFILE_FIELDS)
    if unknown:
        raise ApplicationError(f"Unknown profile fields: {sorted(unknown)}", "invalid_arguments")
    user = User(email=User.objects.normalize_email(email), name=name, surname=surname, **profile)
    user.set_unusable_password()
    return _save_profile(user)


def user_update(*, user: User, **changes) -> User:
    """Applies profile ``changes`` (only the profile fields) and validates the result."""
    unknown = set(changes) - set(PROFILE_FIELDS)
    if unknown:
        raise ApplicationError(f"Unknown profile fields: {sorted(unknown)}", "invalid_arguments")
    for name, value in changes.items():
        setattr(user, name, value)
    if "email" in changes:
        user.email = User.objects.normalize_email(user.email)
    return _save_profile(user)


def user_delete(*, user: User) -> None:
    user.delete()


def user_profiles_read(
    *, principal: Principal, users: list[User], action: str, arguments: dict, **call
) -> list[User]:
    """Hands ``users``' profiles to ``principal`` and audits it: one invocation row named
    ``users.<action>`` with the ids read (never the profiles). ``missing_scope`` without
    ``users:read``: salaries, phones, addresses and birth dates are not the tools' to read.
    ``call`` carries ``via`` and the request ids, as :func:`tools.services.tool_invoke`."""
    from tools.services import invocation_record_read

    principal.require_scope(ApiToken.Scope.USERS_READ)
    invocation_record_read(
        name=f"users.{action}",
        arguments=arguments,
        result={"user_ids": [user.pk for user in users]},
        principal=principal,
        **call,
    )
    return users


def api_token_create(
    *,
    user: User,
    name: str,
    scopes: list[str] | None = None,
    expires_at: datetime | None = None,
) -> tuple[ApiToken, str]:
    """Creates a token and returns it with its secret, which is never stored or shown again."""
    scopes = (
        list(scopes)
        if scopes is not None
        else [ApiToken.Scope.TOOLS_READ, ApiToken.Scope.TOOLS_CALL]
    )
    unknown = sorted(set(scopes) - set(ApiToken.Scope.values))
    if unknown:
        allowed = ", ".join(ApiToken.Scope.values)
        raise ApplicationError(f"Unknown scopes: {', '.join(unknown)}; choose from {allowed}.")
    if not name.strip():
        raise ApplicationError("A token needs a name.", "invalid")
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(
        user=user,
        name=name.strip(),
        prefix=secret[: len(TOKEN_PREFIX) + 6],
        token_hash=hash_token(secret),
        scopes=sorted(set(scopes)),
        expires_at=expires_at,
    )
    return token, secret


def api_token_revoke(*, token: ApiToken) -> ApiToken:
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
    return token


def api_token_authenticate(*, secret: str) -> Principal:
    """The principal for a bearer secret; ``unauthenticated`` if unknown, revoked or expired."""
    token = (
        ApiToken.objects.select_related("user").filter(token_hash=hash_token(secret)).first()
        if secret
        else None
    )
    if token is None:
        raise ApplicationError("Invalid API token.", "unauthenticated")
    return api_token_principal(token=token)


def bearer_authenticate(*, secret: str, resource: str | None = None) -> Principal:
    """The principal of a bearer secret: an API token, else an OAuth access token (bound
    to ``resource`` when one is given, see ``users.oauth.oauth_token_principal``).
    ``unauthenticated`` if neither is known and usable. The one check of a bearer secret
    behind MCP, /v1 and /api."""
    from users.oauth import oauth_token_find, oauth_token_principal

    try:
        return api_token_authenticate(secret=secret)
    except ApplicationError as exc:
        oauth = oauth_token_find(secret=secret) if secret else None
        if oauth is None:
            raise exc from None
    return oauth_token_principal(token=oauth, resource=resource)


def api_token_check(*, token: ApiToken) -> None:
    """Raises ``unauthenticated`` unless ``token`` is usable now: not revoked, not expired,
    and its user active. Records nothing."""
    if token.is_revoked:
        raise ApplicationError("This API token has been revoked.", "unauthenticated")
    if token.is_expired:
        raise ApplicationError("This API token has expired.", "unauthenticated")
    if not token.user.is_active:
        raise ApplicationError("The token's user is inactive.", "unauthenticated")


def caller_check(
    *,
    user: User | None,
    token_id: int | None,
    token: ApiToken | None,
    oauth_client_id: int | None = None,
) -> Principal:
    """The principal of a caller recorded earlier (its user, and the id of its token and the
    token as loaded now, None once deleted, or the OAuth client it came through), if they
    may still call now; ``unauthenticated`` otherwise (user deleted or inactive, token
    revoked, expired or deleted, the user's access through the OAuth client revoked)."""
    if user is None:
        raise ApplicationError("The caller's account no longer exists.", "unauthenticated")
    if token_id is None and oauth_client_id is not None:
        from users.oauth import oauth_client_principal

        if not user.is_active:
            raise ApplicationError("The caller's account is inactive.", "unauthenticated")
        return oauth_client_principal(user=user, application_id=oauth_client_id)
    if token_id is None:
        if not user.is_active:
            raise ApplicationError("The caller's account is inactive.", "unauthenticated")
        return Principal.for_user(user)
    if token is None:
        raise ApplicationError("The caller's API token no longer exists.", "unauthenticated")
    api_token_check(token=token)
    return Principal.for_token(token)


def principal_usable(*, principal: Principal) -> bool:
    """Whether ``principal`` may still act now, read afresh (see :func:`caller_check`). For
    what outlives the request that authenticated it, such as a long-lived stream."""
    token_id = principal.token.pk if principal.token is not None else None
    application = principal.oauth_application
    try:
        caller_check(
            user=User.objects.filter(pk=principal.user.pk).first(),
            oauth_client_id=application.pk if application is not None else None,
            token_id=token_id,
            token=ApiToken.objects.select_related("user").filter(pk=token_id).first()
            if token_id is not None
            else None,
        )
    except ApplicationError:
        return False
    return True


def api_token_principal(*, token: ApiToken) -> Principal:
    """The principal of a token found by its hash; ``unauthenticated`` if it is not usable.

    Records the use at most once per ``LAST_USED_RESOLUTION``.
    """
    api_token_check(token=token)
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
    return Principal.for_token(token)
