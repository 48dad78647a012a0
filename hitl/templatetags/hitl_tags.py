"""Template tags for the admin pages that point reviewers at the queue."""

from django import template

register = template.Library()


@register.simple_tag
def hitl_pending_count() -> int:
    """How many human requests wait for a decision."""
    from hitl.selectors import human_request_pending_count

    return human_request_pending_count()
