import json

from django.core.management.base import BaseCommand

from tools.registry import all_tools
from tools.services import tool_policy_get


class Command(BaseCommand):
    help = "Lists the registered tools with their policy."

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", help="Print JSON instead of a table.")

    def handle(self, *args, **options):
        rows = []
        for spec in all_tools():
            policy = tool_policy_get(spec=spec)
            rows.append(
                {
                    "name": spec.name,
                    "enabled": policy.enabled,
                    "requires_approval": policy.requires_approval,
                    "approvals_required": policy.approvals_required,
                    "approver_group": policy.approver_group.name if policy.approver_group else None,
                    "description": spec.description,
                }
            )
        if options["json"]:
            self.stdout.write(_json_dumps(rows))
            return
        self.stdout.write(f"{'TOOL':<18} {'ENABLED':<8} {'APPROVAL':<10} DESCRIPTION")
        for row in rows:
            approval = f"{row['approvals_required']} needed" if row["requires_approval"] else "-"
            self.stdout.write(
                f"{row['name']:<18} {'yes' if row['enabled'] else 'no':<8} {approval:<10} "
                f"{row['description'].splitlines()[0][:70]}"
            )


def _json_dumps(rows):
    return json.dumps(rows, indent=2)
