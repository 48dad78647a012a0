"""Who is calling: a user, and the token (with its scopes) they came with, if any: an API
token, or an OAuth access token of a client the user allowed."""

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from qmcp_site.errors import ApplicationError
from users.models import ApiToken, User

if TYPE_CHECKING:
    from oauth2_provider.models import AccessToken, Application

ALL_SCOPES = frozenset(ApiToken.Scope.values)


@dataclass(frozen=True)
class Principal:
    user: User
    token: ApiToken | None = None
    scopes: frozenset[str] = field(default=ALL_SCOPES)
    oauth_token: "AccessToken | None" = None
    # The OAuth client of the call: the token's, or (re-checked later) the one recorded.
    oauth_application: "Application | None" = None

    def __post_init__(self):
        if self.oauth_token is not None and self.oauth_application is None:
            object.__setattr__(self, "oauth_application", self.oauth_token.application)

    @classmethod
    def for_user(cls, user: User) -> "Principal":
        """A person logged in with a session: every scope their permissions allow."""
        return cls(user=user)

    @classmethod
    def for_token(cls, token: ApiToken) -> "Principal":
        return cls(user=token.user, token=token, scopes=frozenset(token.scopes))

    @property
    def label(self) -> str:
        if self.token is not None:
            return f"{self.user.email} (token {self.token.prefix}…)"
        if self.oauth_application is not None:
            return f"{self.user.email} (OAuth client {self.oauth_application.name})"
        return self.user.email

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes

    def require_scope(self, scope: str) -> None:
        """Raises ``missing_scope`` unless the principal holds ``scope``."""
        if not self.has_scope(scope):
            raise ApplicationError(
                f"This token lacks the '{scope}' scope.", "missing_scope", {"scope": scope}
            )
