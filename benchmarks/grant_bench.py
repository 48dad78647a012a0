"""What grants cost the gate: ``TOOL_GATE.decide`` per call, in microseconds.

On a throwaway SQLite database, with the rule book cached: a call that needs no approval
(grants are never looked at), a call that needs approval with no grant, with 50 grants for
other callers on its tool (each compared, none matches: the worst case), and one let
through by a grant for its exact arguments (its digest is made once per call).

    .venv/bin/python benchmarks/grant_bench.py [--calls 20000]

This is a benchmark, not a test: it prints figures and asserts nothing.
"""

import argparse
import os
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def per_call_us(decide, facts_of, calls: int) -> float:
    """The median of five rounds of ``calls`` decisions, in µs per call (new facts each
    call, as each tools/call makes them)."""
    rounds = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(calls):
            decide(facts_of())
        rounds.append((time.perf_counter() - started) / calls * 1e6)
    return sorted(rounds)[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    calls = parser.parse_args().calls
    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.update(
            {
                "DJANGO_SETTINGS_MODULE": "qmcp_site.settings",
                "DATABASE_URL": f"sqlite:///{tmp}/bench.sqlite3",
                "SECRET_KEY": "benchmark-only-not-a-secret",
                "LOG_LEVEL": "WARNING",
                "QMCP_POLICY_CACHE_SECONDS": "3600",
            }
        )
        import django

        django.setup()
        from django.core.management import call_command
        from django.utils import timezone

        from hitl.models import ApprovalRule
        from tools.binding import arguments_digest
        from tools.gate import TOOL_GATE, CallFacts
        from tools.registry import get_tool
        from tools.services import tool_policies_sync, tool_policy_get
        from users.models import User
        from users.principals import Principal

        call_command("migrate", verbosity=0)
        tool_policies_sync()
        echo, deploy = get_tool("echo"), get_tool("deploy")
        caller = Principal.for_user(User.objects.create(email="agent@example.com"))
        echo_args = echo.parse_arguments({"message": "hi"})
        deploy_args = deploy.parse_arguments({"service": "api", "version": "1.2.3"})

        def facts(spec, args):
            return lambda: CallFacts(spec, tool_policy_get(spec=spec), args, caller)

        figures = {
            "allowed call (echo), no grants": per_call_us(
                TOOL_GATE.decide, facts(echo, echo_args), calls
            ),
            "gated call (deploy), no grants": per_call_us(
                TOOL_GATE.decide, facts(deploy, deploy_args), calls
            ),
        }
        until = timezone.now() + timedelta(hours=1)
        for n in range(50):
            other = User.objects.create(email=f"other{n}@example.com")
            ApprovalRule.objects.create(
                name=f"grant {n}",
                tool_name="deploy",
                outcome="allow",
                caller=other,
                expires_at=until,
                arguments_digest="0" * 64,
            )
        figures["gated call, 50 grants for others"] = per_call_us(
            TOOL_GATE.decide, facts(deploy, deploy_args), calls
        )
        figures["allowed call (echo), 50 grants on deploy"] = per_call_us(
            TOOL_GATE.decide, facts(echo, echo_args), calls
        )
        ApprovalRule.objects.create(
            name="grant",
            tool_name="deploy",
            outcome="allow",
            caller=caller.user,
            expires_at=until,
            arguments_digest=arguments_digest("deploy", deploy_args.model_dump(mode="json")),
        )
        decision = TOOL_GATE.decide(facts(deploy, deploy_args)())
        assert decision.outcome == "allow", decision  # the bench measures what it says
        figures["call let through by its grant (51st)"] = per_call_us(
            TOOL_GATE.decide, facts(deploy, deploy_args), calls
        )
        for name, us in figures.items():
            print(f"{name:45} {us:7.2f} µs per decision")


if __name__ == "__main__":
    main()
