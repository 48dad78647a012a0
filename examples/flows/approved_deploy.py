"""A Metaflow flow that deploys only with a reviewer's approval, through QMCP.

``deploy`` is gated: the flow's call waits in QMCP's approval queue, the flow waits for the
decision, and QMCP runs the deployment only if a reviewer approves. The outcome (approved
or not, the reviewer's comment, the deployment id) is kept as the ``outcome`` artifact.

    pip install 'qmcp-client[flows]'
    QMCP_URL=http://127.0.0.1:8000 QMCP_TOKEN=... python examples/flows/approved_deploy.py run \\
        --service billing --version 2.4.1 --environment staging
"""

from metaflow import FlowSpec, Parameter, step

from qmcp_client import QMCPClient


class ApprovedDeployFlow(FlowSpec):
    service = Parameter("service", help="the service to deploy", default="billing")
    version = Parameter("version", help="the version to deploy", default="1.0.0")
    environment = Parameter("environment", help="staging or production", default="staging")
    wait = Parameter("wait", help="seconds to wait for a decision", default=3600.0, type=float)

    @step
    def start(self):
        """Asks for the deployment; QMCP holds it for a reviewer."""
        with QMCPClient() as qmcp:
            invocation = qmcp.call_tool(
                "deploy", service=self.service, version=self.version, environment=self.environment
            )
            self.invocation_id = str(invocation.id)
            self.request_id = str(invocation.human_request_id or "")
            if invocation.awaiting_approval:
                print(f"Waiting for approval: {qmcp.url}/hitl/{self.request_id}/")
        self.next(self.decide)

    @step
    def decide(self):
        """Waits for the reviewer's decision (none is needed if the policy does not gate)."""
        self.approved, self.comment = True, ""
        if self.request_id:
            with QMCPClient() as qmcp:
                request = qmcp.wait_for_response(self.request_id, timeout=self.wait)
            self.approved = request.outcome == "approved"
            self.comment = request.responses[-1].comment if request.responses else ""
            print(f"The reviewer's decision: {request.outcome or request.status}")
        self.next(self.deploy)

    @step
    def deploy(self):
        """Follows the deployment that QMCP runs once approved; nothing runs otherwise."""
        with QMCPClient() as qmcp:
            invocation = qmcp.wait_for_invocation(self.invocation_id, timeout=300)
        self.outcome = {
            "approved": self.approved,
            "comment": self.comment,
            "status": invocation.status,
            "deployment_id": (invocation.structured or {}).get("deployment_id")
            if invocation.status == "succeeded"
            else None,
            "message": invocation.text,
        }
        self.next(self.end)

    @step
    def end(self):
        print(f"Outcome: {self.outcome['status']}. {self.outcome['message']}")


if __name__ == "__main__":
    ApprovedDeployFlow()
