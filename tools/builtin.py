"""Built-in tools that need no other app: ``echo`` and ``planner``."""

import re

from pydantic import BaseModel, Field

from tools.registry import ToolResult, tool
from tools.schemas import ToolInput


class EchoInput(ToolInput):
    message: str = Field(max_length=100_000, description="The text to send back.")


class EchoOutput(BaseModel):
    message: str


@tool(
    name="echo",
    title="Echo",
    description="Returns the message it is given. Useful to check that tool calls work.",
    input=EchoInput,
    output=EchoOutput,
    writes=False,
    annotations={"idempotentHint": True, "openWorldHint": False},
    retry_safe=True,
)
def echo(args: EchoInput, ctx) -> ToolResult:
    return ToolResult.text(args.message, structured={"message": args.message})


class PlannerInput(ToolInput):
    goal: str = Field(min_length=1, max_length=2000, description="What should be achieved.")
    max_steps: int = Field(default=7, ge=2, le=20, description="The most steps to return.")


class PlannerOutput(BaseModel):
    goal: str
    steps: list[str]


_SPLIT = re.compile(r"\s*(?:;|\.\s|,?\s+(?:and then|then|and|after that)\s+)\s*", re.IGNORECASE)


def plan_steps(goal: str, max_steps: int) -> list[str]:
    """A deterministic plan: understand, one step per clause of the goal, then verify."""
    goal = " ".join(goal.split()).rstrip(".")
    clauses = [c.strip(" ,") for c in _SPLIT.split(goal) if c.strip(" ,")]
    middle = [c[0].upper() + c[1:] for c in clauses] or [goal]
    steps = [f"Clarify the goal and what done looks like: {goal}."]
    room = max_steps - 2
    if len(middle) > room:
        middle = middle[: room - 1] + ["; ".join(middle[room - 1 :])]
    steps += [f"{c}." for c in middle]
    steps.append("Check the result against the goal and report what was done.")
    return steps[:max_steps]


@tool(
    name="planner",
    title="Planner",
    description=(
        "Turns a goal into a short numbered plan of concrete steps. Give it the goal in one "
        "or two sentences; clauses joined by 'and', 'then' or ';' become separate steps."
    ),
    input=PlannerInput,
    output=PlannerOutput,
    writes=False,
    annotations={"idempotentHint": True, "openWorldHint": False},
    retry_safe=True,
)
def planner(args: PlannerInput, ctx) -> ToolResult:
    steps = plan_steps(args.goal, args.max_steps)
    text = "\n".join(f"{i}. {step}" for i, step in enumerate(steps, start=1))
    return ToolResult.text(text, structured={"goal": args.goal, "steps": steps})
