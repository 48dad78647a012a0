"""A Metaflow flow over QMCP's client library: the ``planner`` tool turns a goal into steps,
and each step goes through ``echo`` in a task of its own (a foreach), joined at the end.

    pip install 'qmcp-client[flows]'
    QMCP_URL=http://127.0.0.1:8000 QMCP_TOKEN=... python examples/flows/simple_plan.py run \\
        --goal "Provision a database, then run the migrations and then smoke-test the API"

The plan and the echoes are kept as artifacts (``steps``, ``echoes``) of the run.
"""

from metaflow import FlowSpec, Parameter, step

from qmcp_client import QMCPClient


class SimplePlanFlow(FlowSpec):
    goal = Parameter(
        "goal",
        help="what should be achieved",
        default="Provision a database, then run the migrations and then smoke-test the API",
    )
    max_steps = Parameter("max_steps", help="the most steps in the plan", default=5, type=int)

    @step
    def start(self):
        """Asks QMCP's planner for the steps (QMCP_URL and QMCP_TOKEN say where and who)."""
        with QMCPClient() as qmcp:
            plan = qmcp.call_tool("planner", goal=self.goal, max_steps=self.max_steps)
        self.steps = plan.structured["steps"]
        print(plan.text)
        self.next(self.echo, foreach="steps")

    @step
    def echo(self):
        with QMCPClient() as qmcp:
            self.echoed = qmcp.call_tool("echo", message=f"Doing: {self.input}").text
        self.next(self.join)

    @step
    def join(self, inputs):
        self.steps = inputs[0].steps
        self.echoes = [task.echoed for task in inputs]
        self.next(self.end)

    @step
    def end(self):
        for echoed in self.echoes:
            print(echoed)


if __name__ == "__main__":
    SimplePlanFlow()
