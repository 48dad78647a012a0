from django.dispatch import Signal

# Sent after the commit that creates or changes a human request, with ``request_id`` and
# ``event`` ("created", "responded", "decided", "expired" or "cancelled"; "finished" when an
# approved call has ended).
human_request_changed = Signal()
