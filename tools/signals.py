from django.dispatch import Signal

# Sent inside the transaction that records a call needing approval, with ``invocation``,
# the gate's ``decision`` (tools.gate.GateDecision: approver group, M of N, timeout, risk),
# the tool's ``preview`` (a dict, or None) and the agent's ``reason``. The hitl
# app receives it and creates the HumanRequest; tools knows nothing of hitl.
invocation_gated = Signal()

# Sent after the commit that ends an invocation (succeeded, failed, rejected, expired or
# cancelled), with ``invocation_id``. Interfaces that wait for a result listen to it.
invocation_finished = Signal()

# Sent when an approved call is about to run (first run or a retry), with ``invocation``.
# A receiver may return a text that the agent is told with the result (hitl's: that a
# reviewer changed the arguments), read from what is stored, so a retry tells it too.
approved_run_notes = Signal()
