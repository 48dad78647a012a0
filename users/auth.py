"""Bearer-token authentication for the REST APIs."""

from ninja.security import HttpBearer

from users.principals import Principal
from users.services import bearer_authenticate


class BearerAuth(HttpBearer):
    """Accepts ``Authorization: Bearer <token>``; sets ``request.principal``.

    An invalid, revoked or expired token raises ``unauthenticated``, so the client learns
    which; a missing header gets ninja's plain 401.
    """

    openapi_description = "An API token from `manage.py create_api_token` or the admin."

    def authenticate(self, request, token: str) -> Principal:
        principal = bearer_authenticate(secret=token)
        request.principal = principal
        return principal
