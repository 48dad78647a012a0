"""The fixture tools, resources and prompts that the official MCP conformance suite calls.

Registered only when ``QMCP_CONFORMANCE_FIXTURES`` is on (it is off by default); run the
suite with ``../shared/mcp-conformance/run.sh http://127.0.0.1:PORT/mcp``.
"""

import asyncio
import base64
import json

from pydantic import BaseModel, ConfigDict, Field

from mcp_transport.features import Prompt, Resource, ResourceTemplate, register, text_message
from qmcp_site.errors import ApplicationError
from tools.registry import ToolResult, tool
from tools.schemas import ToolInput

# A 1x1 transparent PNG, and a short silent 8 kHz mono WAV.
PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kg"
    "AAAABJRU5ErkJggg=="
)


def _wav() -> str:
    samples = b"\x00\x00" * 800
    header = (
        b"RIFF"
        + (36 + len(samples)).to_bytes(4, "little")
        + b"WAVEfmt "
        + (16).to_bytes(4, "little")
        + (1).to_bytes(2, "little")  # PCM
        + (1).to_bytes(2, "little")  # mono
        + (8000).to_bytes(4, "little")
        + (16000).to_bytes(4, "little")
        + (2).to_bytes(2, "little")
        + (16).to_bytes(2, "little")
        + b"data"
        + len(samples).to_bytes(4, "little")
    )
    return base64.b64encode(header + samples).decode()


WAV = _wav()
IMAGE = {"type": "image", "data": PNG, "mimeType": "image/png"}


class NoArgs(ToolInput):
    pass


class PromptArg(ToolInput):
    prompt: str


class MessageArg(ToolInput):
    message: str


class AnyArgs(BaseModel):
    model_config = ConfigDict(extra="allow")


def fixture(name: str, description: str, input=NoArgs, **kwargs):
    return tool(name=name, description=description, input=input, **kwargs)


@fixture("test_simple_text", "Returns a simple text response.")
def simple_text(args, ctx):
    return ToolResult.text("This is a simple text response for testing.")


@fixture("test_image_content", "Returns an image.")
def image_content(args, ctx):
    return ToolResult(content=[IMAGE])


@fixture("test_audio_content", "Returns an audio clip.")
def audio_content(args, ctx):
    return ToolResult(content=[{"type": "audio", "data": WAV, "mimeType": "audio/wav"}])


@fixture("test_embedded_resource", "Returns an embedded resource.")
def embedded_resource(args, ctx):
    resource = {
        "uri": "test://embedded-resource",
        "mimeType": "text/plain",
        "text": "This is an embedded resource content.",
    }
    return ToolResult(content=[{"type": "resource", "resource": resource}])


@fixture("test_multiple_content_types", "Returns text, an image and a resource.")
def multiple_content_types(args, ctx):
    resource = {
        "uri": "test://mixed-content-resource",
        "mimeType": "application/json",
        "text": json.dumps({"test": "data", "value": 123}),
    }
    return ToolResult(
        content=[
            {"type": "text", "text": "Multiple content types test:"},
            IMAGE,
            {"type": "resource", "resource": resource},
        ]
    )


@fixture("test_tool_with_logging", "Sends log messages while it runs.")
async def tool_with_logging(args, ctx):
    for index, message in enumerate(
        ["Tool execution started", "Tool processing data", "Tool execution completed"]
    ):
        if index:
            await asyncio.sleep(0.05)
        await ctx.log("info", message, logger="conformance")
    return ToolResult.text("Logging test completed.")


@fixture("test_error_handling", "Always fails, as a tool error.")
def error_handling(args, ctx):
    raise ApplicationError("This tool intentionally returns an error for testing")


@fixture("test_tool_with_progress", "Reports progress while it runs.")
async def tool_with_progress(args, ctx):
    for index, progress in enumerate([0, 50, 100]):
        if index:
            await asyncio.sleep(0.05)
        await ctx.report_progress(progress, 100, f"Completed step {index + 1} of 3")
    return ToolResult.text("Progress test completed.")


@fixture("test_sampling", "Asks the client's LLM to complete a prompt.", input=PromptArg)
async def sampling(args, ctx):
    result = await ctx.request(
        "sampling/createMessage",
        {
            "messages": [{"role": "user", "content": {"type": "text", "text": args.prompt}}],
            "maxTokens": 100,
        },
    )
    content = result.get("content") or {}
    text = content.get("text", "") if isinstance(content, dict) else str(content)
    return ToolResult.text(f"LLM response: {text}")


async def _elicit(ctx, message: str, schema: dict) -> ToolResult:
    result = await ctx.request(
        "elicitation/create", {"message": message, "requestedSchema": schema}
    )
    return ToolResult.text(
        f"User response: action={result.get('action')}, content={json.dumps(result.get('content'))}"
    )


@fixture("test_elicitation", "Asks the user for information.", input=MessageArg)
async def elicitation(args, ctx):
    schema = {
        "type": "object",
        "properties": {
            "username": {"type": "string", "description": "User's response"},
            "email": {"type": "string", "description": "User's email address"},
        },
        "required": ["username", "email"],
    }
    return await _elicit(ctx, args.message, schema)


@fixture("test_elicitation_sep1034_defaults", "Elicits with default values (SEP-1034).")
async def elicitation_defaults(args, ctx):
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "description": "User name", "default": "John Doe"},
            "age": {"type": "integer", "description": "User age", "default": 30},
            "score": {"type": "number", "description": "User score", "default": 95.5},
            "status": {
                "type": "string",
                "description": "User status",
                "enum": ["active", "inactive", "pending"],
                "default": "active",
            },
            "verified": {"type": "boolean", "description": "Verified user", "default": True},
        },
    }
    return await _elicit(ctx, "Please review and update the form fields with defaults", schema)


@fixture("test_elicitation_sep1330_enums", "Elicits with every enum style (SEP-1330).")
async def elicitation_enums(args, ctx):
    options = [("option1", "First Option"), ("option2", "Second Option"), ("option3", "Third")]
    schema = {
        "type": "object",
        "properties": {
            "untitledSingle": {
                "type": "string",
                "description": "Select one option",
                "enum": [value for value, _ in options],
            },
            "titledSingle": {
                "type": "string",
                "description": "Select one option with titles",
                "oneOf": [{"const": value, "title": title} for value, title in options],
            },
            "legacyEnum": {
                "type": "string",
                "description": "Select one option (legacy)",
                "enum": [value for value, _ in options],
                "enumNames": [title for _, title in options],
            },
            "untitledMulti": {
                "type": "array",
                "description": "Select multiple options",
                "minItems": 1,
                "maxItems": 3,
                "items": {"type": "string", "enum": [value for value, _ in options]},
            },
            "titledMulti": {
                "type": "array",
                "description": "Select multiple options with titles",
                "minItems": 1,
                "maxItems": 3,
                "items": {"anyOf": [{"const": value, "title": title} for value, title in options]},
            },
        },
        "required": [],
    }
    return await _elicit(ctx, "Please select options from the enum fields", schema)


JSON_SCHEMA_2020_12 = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "$defs": {
        "address": {
            "$anchor": "addressDef",
            "type": "object",
            "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
        }
    },
    "properties": {
        "name": {"type": "string"},
        "address": {"$ref": "#/$defs/address"},
        "contactMethod": {"type": "string", "enum": ["phone", "email"]},
        "phone": {"type": "string"},
        "email": {"type": "string"},
    },
    # Composition and conditional keywords, which 2026-07-28 checks are kept (SEP-2106).
    "allOf": [{"anyOf": [{"required": ["phone"]}, {"required": ["email"]}]}],
    "if": {"properties": {"contactMethod": {"const": "phone"}}, "required": ["contactMethod"]},
    "then": {"required": ["phone"]},
    "else": {"required": ["email"]},
    "additionalProperties": False,
}


@fixture(
    "json_schema_2020_12_tool",
    "Has an input schema in JSON Schema 2020-12.",
    input=AnyArgs,
    raw_input_schema=JSON_SCHEMA_2020_12,
)
def json_schema_tool(args, ctx):
    return ToolResult.text(f"Received: {json.dumps(args.model_dump())}")


# --- Multi round-trip requests (2026-07-28, SEP-2322) -----------------------------------------


def _elicitation(message: str, properties: dict, required: list[str]) -> tuple[str, dict]:
    schema = {"type": "object", "properties": properties, "required": required}
    return "elicitation/create", {"message": message, "requestedSchema": schema}


def _sampling(text: str, max_tokens: int) -> tuple[str, dict]:
    messages = [{"role": "user", "content": {"type": "text", "text": text}}]
    return "sampling/createMessage", {"messages": messages, "maxTokens": max_tokens}


def _content(answer: dict | None) -> dict:
    content = (answer or {}).get("content")
    return content if isinstance(content, dict) else {}


NAME_QUESTION = _elicitation("What is your name?", {"name": {"type": "string"}}, ["name"])


@fixture("test_input_required_result_elicitation", "Asks the user's name, then greets them.")
async def input_required_elicitation(args, ctx):
    answers = await ctx.ask({"user_name": NAME_QUESTION})
    return ToolResult.text(f"Hello, {_content(answers['user_name']).get('name', 'stranger')}!")


@fixture("test_input_required_result_sampling", "Asks the client's LLM a question.")
async def input_required_sampling(args, ctx):
    answers = await ctx.ask({"capital_question": _sampling("What is the capital of France?", 100)})
    return ToolResult.text(f"LLM response: {_content(answers['capital_question']).get('text', '')}")


@fixture("test_input_required_result_list_roots", "Asks for the client's roots.")
async def input_required_roots(args, ctx):
    answers = await ctx.ask({"client_roots": ("roots/list", {})})
    roots = (answers["client_roots"] or {}).get("roots") or []
    uris = ", ".join(r.get("uri", "") for r in roots if isinstance(r, dict))
    return ToolResult.text(f"Client roots: {uris}")


CONFIRM = _elicitation("Please confirm", {"ok": {"type": "boolean"}}, ["ok"])


@fixture("test_input_required_result_request_state", "Asks for a confirmation, keeping state.")
async def input_required_state(args, ctx):
    answers = await ctx.ask({"confirm": CONFIRM})
    # Reaching here on the second round means the signed requestState checked out.
    return ToolResult.text(f"state-ok: confirmed={_content(answers['confirm']).get('ok')}")


@fixture("test_input_required_result_tampered_state", "Asks for a confirmation (signed state).")
async def input_required_tampered(args, ctx):
    await ctx.ask({"confirm": CONFIRM})
    return ToolResult.text("state-ok")


@fixture("test_input_required_result_multiple_inputs", "Asks three things at once.")
async def input_required_multiple(args, ctx):
    answers = await ctx.ask(
        {
            "user_name": NAME_QUESTION,
            "greeting": _sampling("Generate a greeting", 50),
            "client_roots": ("roots/list", {}),
        }
    )
    name = _content(answers["user_name"]).get("name", "")
    greeting = _content(answers["greeting"]).get("text", "")
    return ToolResult.text(f"{greeting} {name}: all inputs received".strip())


@fixture("test_input_required_result_multi_round", "Asks two things, one round each.")
async def input_required_multi_round(args, ctx):
    first = await ctx.ask(
        {
            "step1": _elicitation(
                "Step 1: What is your name?", {"name": {"type": "string"}}, ["name"]
            )
        }
    )
    second = await ctx.ask(
        {
            "step2": _elicitation(
                "Step 2: What is your favorite color?", {"color": {"type": "string"}}, ["color"]
            )
        }
    )
    name = _content(first["step1"]).get("name", "")
    color = _content(second["step2"]).get("color", "")
    return ToolResult.text(f"{name} likes {color}.")


@fixture("test_input_required_result_capabilities", "Asks only what the client can answer.")
async def input_required_capabilities(args, ctx):
    answers = await ctx.ask(
        {"user_name": NAME_QUESTION, "greeting": _sampling("Generate a greeting", 50)}
    )
    got = sorted(key for key, value in answers.items() if value is not None)
    return ToolResult.text(f"Received: {', '.join(got)}")


@fixture("test_missing_capability", "Needs sampling, which the client must have declared.")
async def missing_capability(args, ctx):
    await ctx.ask({"sample": _sampling("Say hello", 20)})
    return ToolResult.text("sampled")


@fixture("test_streaming_elicitation", "Asks the user something while it runs.")
async def streaming_elicitation(args, ctx):
    await ctx.report_progress(0, 1, "starting")
    answers = await ctx.ask({"user_name": NAME_QUESTION})
    return ToolResult.text(f"Hello, {_content(answers['user_name']).get('name', 'stranger')}!")


@fixture("test_logging_tool", "Logs three messages while it runs.")
async def logging_tool(args, ctx):
    for text in ("Tool execution started", "Tool processing data", "Tool execution completed"):
        await ctx.log("info", text)
    return ToolResult.text("Logged three messages.")


@fixture("test_reconnection", "Closes its stream mid-call; the client resumes it.")
async def reconnection(args, ctx):
    await asyncio.sleep(0.05)
    await ctx.close_stream()
    await asyncio.sleep(0.2)
    return ToolResult.text("Reconnection test completed successfully.")


# --- The tasks extension (2026-07-28, SEP-2663) ----------------------------------------------


class NameArg(ToolInput):
    name: str


class ComputeArgs(ToolInput):
    seconds: float = Field(0, ge=0, le=3600)
    label: str = ""


class FilenameArg(ToolInput):
    filename: str


@fixture("greet", "Greets someone by name, at once (never a task).", input=NameArg)
def greet(args, ctx):
    return ToolResult.text(f"Hello, {args.name}!")


@fixture(
    "slow_compute",
    "Sleeps for the given seconds, then answers; a task where the client supports tasks.",
    input=ComputeArgs,
    task_support="optional",
)
async def slow_compute(args, ctx):
    await ctx.as_task()
    await asyncio.sleep(args.seconds)
    return ToolResult.text(f"Computed {args.label or 'result'} after {args.seconds:g} seconds.")


@fixture(
    "failing_job",
    "Runs as a task and fails after about a second, as a tool error.",
    task_support="required",
)
async def failing_job(args, ctx):
    await ctx.as_task()
    await asyncio.sleep(1)
    raise ApplicationError("Tool execution failed")


@fixture(
    "protocol_error_job",
    "Runs as a task and crashes: a protocol-level failure.",
    task_support="optional",
)
async def protocol_error_job(args, ctx):
    await ctx.as_task()
    raise RuntimeError("protocol_error_job crashes on purpose")


@fixture(
    "confirm_delete",
    "Runs as a task that asks its client to confirm a deletion.",
    input=FilenameArg,
    task_support="optional",
)
async def confirm_delete(args, ctx):
    await ctx.as_task()
    question = _elicitation(
        f"Delete {args.filename}?", {"confirm": {"type": "boolean"}}, ["confirm"]
    )
    answers = await ctx.ask({"confirm": question})
    confirmed = _content(answers["confirm"]).get("confirm") is True
    return ToolResult.text(f"{args.filename}: {'deleted' if confirmed else 'kept'}.")


@fixture(
    "multi_input",
    "Runs as a task that asks its client two things at once.",
    task_support="optional",
)
async def multi_input(args, ctx):
    await ctx.as_task()
    field = {"name": {"type": "string"}, "confirm": {"type": "boolean"}}
    answers = await ctx.ask(
        {
            "first": _elicitation("First value?", field, ["name"]),
            "second": _elicitation("Second value?", field, ["name"]),
        }
    )
    names = [_content(answers[key]).get("name", "") for key in ("first", "second")]
    return ToolResult.text(f"Got {names[0]} and {names[1]}.")


@fixture(
    "test_tool_with_task",
    "Asks the user's name (multi round-trip), then greets them as a task.",
    task_support="required",
)
async def tool_with_task(args, ctx):
    answers = await ctx.ask({"user_name": NAME_QUESTION})
    await ctx.as_task()
    return ToolResult.text(f"Hello, {_content(answers['user_name']).get('name', 'stranger')}!")


# --- Custom headers (2026-07-28, SEP-2243) ----------------------------------------------------


class RegionArg(ToolInput):
    region: str = Field(
        description="The region to report on; mirrored in the Mcp-Param-Region header.",
        json_schema_extra={"x-mcp-header": "Region"},
    )


@fixture(
    "test_header_param",
    "Echoes an argument that its client also sends as a header.",
    input=RegionArg,
)
def header_param(args, ctx):
    return ToolResult.text(f"Region: {args.region}")


def _text(uri: str, text: str, mime_type: str = "text/plain"):
    return lambda principal: [{"uri": uri, "mimeType": mime_type, "text": text}]


register(
    Resource(
        uri="test://static-text",
        name="Static Text Resource",
        description="A static text resource for testing",
        mime_type="text/plain",
        read=_text("test://static-text", "This is the content of the static text resource."),
    )
)
register(
    Resource(
        uri="test://static-binary",
        name="Static Binary Resource",
        description="A static binary resource (image) for testing",
        mime_type="image/png",
        read=lambda principal: [
            {"uri": "test://static-binary", "mimeType": "image/png", "blob": PNG}
        ],
    )
)
register(
    Resource(
        uri="test://watched-resource",
        name="Watched Resource",
        description="A resource that can be subscribed to",
        mime_type="text/plain",
        read=_text("test://watched-resource", "Watched resource content."),
    )
)
register(
    ResourceTemplate(
        uri_template="test://template/{id}/data",
        name="Template Resource",
        description="A resource template with a parameter",
        mime_type="application/json",
        read=lambda principal, uri, id: [
            {
                "uri": uri,
                "mimeType": "application/json",
                "text": json.dumps({"id": id, "templateTest": True, "data": f"Data for ID: {id}"}),
            }
        ],
    )
)
register(
    Prompt(
        name="test_simple_prompt",
        description="A simple prompt without arguments",
        arguments=[],
        render=lambda principal: [text_message("This is a simple prompt for testing.")],
    )
)
register(
    Prompt(
        name="test_prompt_with_arguments",
        description="A prompt with required arguments",
        arguments=[
            {"name": "arg1", "description": "First test argument", "required": True},
            {"name": "arg2", "description": "Second test argument", "required": True},
        ],
        render=lambda principal, arg1, arg2: [
            text_message(f"Prompt with arguments: arg1='{arg1}', arg2='{arg2}'")
        ],
        complete={"arg1": lambda principal, value: ["paris", "park", "party", "test", "testing"]},
    )
)
register(
    Prompt(
        name="test_prompt_with_embedded_resource",
        description="A prompt that includes an embedded resource",
        arguments=[{"name": "resourceUri", "description": "URI of the resource", "required": True}],
        render=lambda principal, resourceUri: [
            {
                "role": "user",
                "content": {
                    "type": "resource",
                    "resource": {
                        "uri": resourceUri,
                        "mimeType": "text/plain",
                        "text": "Embedded resource content for testing.",
                    },
                },
            },
            text_message("Please process the embedded resource above."),
        ],
    )
)
register(
    Prompt(
        name="test_input_required_result_prompt",
        description="A prompt that asks the user for context first (SEP-2322)",
        arguments=[],
        asks={
            "user_context": (
                "elicitation/create",
                {
                    "message": "What context should the prompt use?",
                    "requestedSchema": {
                        "type": "object",
                        "properties": {"context": {"type": "string"}},
                        "required": ["context"],
                    },
                },
            )
        },
        render=lambda principal, answers: [
            text_message(
                "Use this context: "
                + str(((answers.get("user_context") or {}).get("content") or {}).get("context", ""))
            )
        ],
    )
)
register(
    Prompt(
        name="test_prompt_with_image",
        description="A prompt that includes image content",
        arguments=[],
        render=lambda principal: [
            {"role": "user", "content": IMAGE},
            text_message("Please analyze the image above."),
        ],
    )
)
