from django.db.models import Q, QuerySet

from qmcp_site.errors import ApplicationError
from users.models import User


def managed_user_queryset() -> QuerySet[User]:
    """Users the user tools may see: never staff or superusers."""
    return User.objects.filter(is_staff=False, is_superuser=False)


def user_get_managed(*, user_id: int) -> User:
    """The managed user with ``user_id``; a clear error for a missing or privileged account."""
    user = User.objects.filter(pk=user_id).first()
    if user is None:
        raise ApplicationError(f"No user with id {user_id}.", "not_found", {"user_id": user_id})
    if user.is_privileged:
        raise ApplicationError(
            f"User {user_id} is a staff account; the user tools never read or change staff "
            "or superuser accounts.",
            "forbidden",
            {"user_id": user_id},
        )
    return user


def user_list(*, query: str = "") -> QuerySet[User]:
    """Managed users, by id, whose name, surname or email contains every word of ``query``
    (case-insensitive); all of them for an empty query."""
    condition = Q()
    for term in query.split():
        condition &= Q(name__icontains=term) | Q(surname__icontains=term) | Q(email__icontains=term)
    return managed_user_queryset().filter(condition).order_by("id")


# Up to this many matches are found in any order, then sorted (see user_search).
SEARCH_MATCHES_SORTED = 200


def user_search(*, query: str, limit: int = 20) -> list[User]:
    """The first ``limit`` managed users, by id, whose name, surname or email contains every
    word of ``query`` (case-insensitive); fast on PostgreSQL for rare and common words.

    Asked for the first rows by id, PostgreSQL walks the primary key and filters: quick
    when many users match, a scan of every user when few or none do. So the matches are
    first looked up in any order, which the trigram indexes serve; only when there are
    more than ``SEARCH_MATCHES_SORTED`` (common words) is the walk by id used.
    """
    matches = user_list(query=query)
    ids = list(matches.order_by().values_list("id", flat=True)[: SEARCH_MATCHES_SORTED + 1])
    if len(ids) > SEARCH_MATCHES_SORTED:
        return list(matches[:limit])
    return list(User.objects.filter(pk__in=sorted(ids)[:limit]).order_by("id"))
