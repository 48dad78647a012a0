from django.core.management.base import BaseCommand

from mcp_transport.sessions import sessions_purge


class Command(BaseCommand):
    help = (
        "Deletes MCP sessions that expired or were closed over a day ago, with their stored "
        "events and tasks, and stored events past QMCP_MCP_EVENT_RETENTION_SECONDS "
        "(as Django's clearsessions does for web sessions)."
    )

    def handle(self, **options):
        deleted = sessions_purge()
        if options["verbosity"] >= 1:
            self.stdout.write(f"Deleted {deleted} MCP session and event rows.")
