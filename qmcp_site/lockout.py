"""The login lockout's two hooks into django-axes (configured in settings): whom a login
attempt is for, and the page a locked-out login gets."""

import math

from axes.helpers import get_cool_off
from django.conf import settings
from django.shortcuts import render


def login_username(request, credentials=None) -> str:
    """The username an attempt is for, as the login forms post it (``username``, holding the
    email), case-folded: ``Admin@X`` and ``admin@x`` count as one account."""
    source = credentials if credentials else getattr(request, "POST", {})
    return str(source.get("username") or "").strip().casefold()


def login_locked_out(request, original_response=None, credentials=None):
    """429 with ``Retry-After``: names the account and how long it stays locked."""
    cool_off = get_cool_off(request)
    seconds = math.ceil(cool_off.total_seconds()) if cool_off else None
    context = {
        "username": login_username(request, credentials),
        "failure_limit": settings.AXES_FAILURE_LIMIT,
        "minutes": math.ceil(seconds / 60) if seconds else None,
    }
    response = render(request, "admin/locked_out.html", context, status=429)
    if seconds:
        response["Retry-After"] = str(seconds)
    return response
