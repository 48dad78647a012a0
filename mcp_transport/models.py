from django.conf import settings
from django.db import models


class McpSession(models.Model):
    """One MCP session (``Mcp-Session-Id``), usable on any worker and across restarts."""

    id = models.CharField(primary_key=True, max_length=32, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="mcp_sessions"
    )
    token = models.ForeignKey(
        "users.ApiToken",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="mcp_sessions",
        help_text="The token that opened the session; only it may use the session.",
    )
    oauth_client = models.ForeignKey(
        "oauth2_provider.Application",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="+",
        help_text="Opened with an OAuth token: only this client's tokens of the user may use it.",
    )
    protocol_version = models.CharField(max_length=16)
    client_info = models.JSONField(default=dict, blank=True)
    client_capabilities = models.JSONField(default=dict, blank=True)
    log_level = models.CharField(max_length=16, default="info")
    subscriptions = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField()
    expires_at = models.DateTimeField(db_index=True)
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "MCP session"

    def __str__(self):
        name = (self.client_info or {}).get("name", "client")
        return f"{name} {self.id[:8]}…"

    @property
    def client_name(self) -> str:
        return (self.client_info or {}).get("name", "")


class McpEvent(models.Model):
    """A stored SSE event, so a client that reconnects with Last-Event-ID gets what it missed.

    The event id sent to the client is ``<stream_id>-<seq>``; ``final`` marks the event that
    completes its stream (the JSON-RPC response).
    """

    session = models.ForeignKey(McpSession, on_delete=models.CASCADE, related_name="events")
    stream_id = models.CharField(max_length=32)
    seq = models.PositiveIntegerField()
    data = models.TextField(blank=True)
    final = models.BooleanField(default=False)
    # On the first event of a stream that waits for a gated call: what it waits for, so
    # whoever resumes the stream can finish it, on any worker, after any restart.
    invocation = models.ForeignKey(
        "tools.ToolInvocation", null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    rpc_id = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["stream_id", "seq"]
        constraints = [
            models.UniqueConstraint(fields=["stream_id", "seq"], name="mcp_event_stream_seq")
        ]

    def __str__(self):
        return self.event_id

    @property
    def event_id(self) -> str:
        return f"{self.stream_id}-{self.seq}"


class McpTask(models.Model):
    """An MCP task: a tools/call that goes on after its request was answered.

        The task is the invocation. A 2025-11-25 task (a task-augmented call) belongs to its
        session; a 2026-07-28 task (the tasks extension) has none. Either way it is owned by the
        token that made it (its user's, without a token; the user's through one OAuth client, with
    an OAuth token): ``user``, ``token`` and ``oauth_client`` are the caller's.
        A 2026 task that waits for its client's input keeps the questions still open in
        ``input_requests`` and every answer so far in ``input_responses`` (see
        mcp_transport.methods.tasks_2026).
    """

    invocation = models.OneToOneField(
        "tools.ToolInvocation", primary_key=True, on_delete=models.CASCADE, related_name="mcp_task"
    )
    session = models.ForeignKey(
        McpSession, null=True, blank=True, on_delete=models.CASCADE, related_name="tasks"
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="mcp_tasks"
    )
    token = models.ForeignKey(
        "users.ApiToken", null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    oauth_client = models.ForeignKey(
        "oauth2_provider.Application",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="+",
    )
    ttl_ms = models.PositiveIntegerField(null=True, blank=True)
    input_requests = models.JSONField(default=dict, blank=True)
    input_responses = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # A 2026 task is forgotten after its ttl (sessions_purge); a 2025 task with its session.
    expires_at = models.DateTimeField(null=True, blank=True, db_index=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "MCP task"

    def __str__(self):
        return str(self.invocation_id)
