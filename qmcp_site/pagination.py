"""Page-number pagination for /v1 whose page numbers stay within what a database can offset."""

from ninja import Field, Schema
from ninja.pagination import PageNumberPagination as NinjaPageNumberPagination

# Far beyond any real page, and (times a page size) far within a 64-bit OFFSET.
MAX_PAGE = 10**9


class PageNumberPagination(NinjaPageNumberPagination):
    """Ninja's, with bounded ``page`` and ``page_size``: a 35-digit page number is a 422
    ``invalid``, not an OFFSET the database refuses."""

    class Input(Schema):
        page: int = Field(1, ge=1, le=MAX_PAGE)
        page_size: int | None = Field(None, ge=1, le=MAX_PAGE)
