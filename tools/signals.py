from django.dispatch import Signal

# Sent inside the transaction that records a call needing approval, with ``invocation`` and
# ``policy``. The hitl app receives it and creates the HumanRequest; tools knows nothing of hitl.
invocation_gated = Signal()
