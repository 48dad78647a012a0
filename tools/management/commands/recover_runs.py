from django.core.management.base import BaseCommand

from tools.services import tool_invocations_recover


class Command(BaseCommand):
    help = (
        "Settles approved calls whose worker was lost (their lease lapsed): runs a retry-safe "
        "tool's call once more, ends any other failed. The same pass Celery beat runs."
    )

    def handle(self, *args, **options):
        counts = tool_invocations_recover()
        self.stdout.write(
            f"{counts['retried']} call(s) queued to run again, {counts['failed']} ended failed."
        )
