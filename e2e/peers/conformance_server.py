"""The upstream the MCP conformance suite runs against, through the gateway.

usage: conformance_server.py PORT
Serves Streamable HTTP at http://127.0.0.1:PORT/mcp with the `mcp` Python SDK (dual-era).
The server scenarios call fixture tools, resources and prompts by name (`test_simple_text`,
`test://static-text`, `test_simple_prompt`...); this server offers them, written for mcpgate
from the scenario descriptions, so that a failing check points at the gateway.
"""

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import sys
from typing import Annotated, Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.prompts.base import UserMessage
from mcp.server.mcpserver.resolve import Elicit, ListRoots, Resolve, Sample
from mcp.server.streamable_http import EventMessage, EventStore
from mcp.shared.exceptions import MCPError
from mcp.types import (
    INVALID_PARAMS,
    MISSING_REQUIRED_CLIENT_CAPABILITY,
    AudioContent,
    CallToolResult,
    Completion,
    CreateMessageRequest,
    CreateMessageRequestParams,
    CreateMessageResult,
    ElicitRequest,
    ElicitRequestFormParams,
    EmbeddedResource,
    EmptyResult,
    ImageContent,
    InputRequiredResult,
    ListRootsRequest,
    ListRootsResult,
    SamplingMessage,
    SetLevelRequestParams,
    SubscribeRequestParams,
    TextContent,
    TextResourceContents,
    UnsubscribeRequestParams,
)
from pydantic import BaseModel, Field

# A 1x1 PNG and a minimal WAV file.
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
WAV = "UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAAB9AAACABAAZGF0YQIAAAA="

server = MCPServer(name="mcpgate-conformance-upstream", version="1.0.0", instructions="Conformance fixture behind mcpgate.")


def text(value: str) -> TextContent:
    return TextContent(type="text", text=value)


# ----- tools -----


@server.tool()
def test_simple_text() -> list[TextContent]:
    """Answers with one text block."""
    return [text("This is a simple text response for testing.")]


@server.tool()
def test_image_content() -> list[ImageContent]:
    """Answers with an image."""
    return [ImageContent(type="image", data=PNG, mimeType="image/png")]


@server.tool()
def test_audio_content() -> list[AudioContent]:
    """Answers with audio."""
    return [AudioContent(type="audio", data=WAV, mimeType="audio/wav")]


def embedded(uri: str, mime: str, body: str) -> EmbeddedResource:
    return EmbeddedResource(
        type="resource", resource=TextResourceContents(uri=uri, mimeType=mime, text=body)
    )


@server.tool()
def test_embedded_resource() -> list[EmbeddedResource]:
    """Answers with an embedded resource."""
    return [embedded("test://embedded-resource", "text/plain", "This is an embedded resource content.")]


@server.tool()
def test_multiple_content_types() -> list[Any]:
    """Answers with text, an image and a resource."""
    return [
        text("Multiple content types test:"),
        ImageContent(type="image", data=PNG, mimeType="image/png"),
        embedded("test://mixed-content-resource", "application/json", json.dumps({"test": "data", "value": 123})),
    ]


@server.tool()
async def test_tool_with_logging(ctx: Context) -> str:
    """Sends three log messages while it runs."""
    for message in ["Tool execution started", "Tool processing data", "Tool execution completed"]:
        await ctx.info(message)
        await asyncio.sleep(0.05)
    return "Tool with logging executed successfully"


@server.tool()
async def test_logging_tool(ctx: Context) -> str:
    """Sends a log message (sent only when the request asked for logs)."""
    await ctx.info("logging tool ran")
    return "logged"


@server.tool()
async def test_tool_with_progress(ctx: Context) -> str:
    """Reports progress 0, 50 and 100 of 100."""
    for step in (0, 50, 100):
        await ctx.report_progress(step, 100, f"Completed step {step} of 100")
        await asyncio.sleep(0.05)
    token = ctx.request_context.meta.progress_token if ctx.request_context.meta else None
    return str(token)


@server.tool()
def test_error_handling() -> str:
    """Always fails."""
    raise RuntimeError("This tool intentionally returns an error for testing")


class Response(BaseModel):
    response: str


async def ask_user(message: str) -> Any:
    return Elicit(message, Response)


@server.tool()
def test_elicitation(message: str, answer: Annotated[Any, Resolve(ask_user)]) -> str:
    """Asks the user for a response (elicitation)."""
    return f"User response: action=accept, content={json.dumps(answer.model_dump())}"


async def ask_llm(prompt: str) -> Sample:
    return Sample([SamplingMessage(role="user", content=text(prompt))], max_tokens=100)


@server.tool()
def test_sampling(prompt: str, reply: Annotated[CreateMessageResult, Resolve(ask_llm)]) -> str:
    """Asks the client's LLM (sampling)."""
    content = reply.content
    answer = getattr(content, "text", None) or "No response"
    return f"LLM response: {answer}"


async def roots() -> ListRoots:
    return ListRoots()


@server.tool()
def test_list_roots(found: Annotated[ListRootsResult, Resolve(roots)]) -> str:
    """Asks the client for its roots."""
    return json.dumps([str(root.uri) for root in found.roots])


DEFAULTS_SCHEMA = {
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
        "verified": {"type": "boolean", "description": "Verification status", "default": True},
    },
    "required": [],
}

ENUMS_SCHEMA = {
    "type": "object",
    "properties": {
        "untitledSingle": {"type": "string", "description": "Select one option", "enum": ["option1", "option2", "option3"]},
        "titledSingle": {
            "type": "string",
            "description": "Select one option with titles",
            "oneOf": [
                {"const": "value1", "title": "First Option"},
                {"const": "value2", "title": "Second Option"},
                {"const": "value3", "title": "Third Option"},
            ],
        },
        "legacyEnum": {
            "type": "string",
            "description": "Select one option (legacy)",
            "enum": ["opt1", "opt2", "opt3"],
            "enumNames": ["Option One", "Option Two", "Option Three"],
        },
        "untitledMulti": {
            "type": "array",
            "description": "Select multiple options",
            "minItems": 1,
            "maxItems": 3,
            "items": {"type": "string", "enum": ["option1", "option2", "option3"]},
        },
        "titledMulti": {
            "type": "array",
            "description": "Select multiple options with titles",
            "minItems": 1,
            "maxItems": 3,
            "items": {
                "anyOf": [
                    {"const": "value1", "title": "First Choice"},
                    {"const": "value2", "title": "Second Choice"},
                    {"const": "value3", "title": "Third Choice"},
                ]
            },
        },
    },
    "required": [],
}


async def elicit_raw(ctx: Context, message: str, schema: dict[str, Any]) -> str:
    result = await ctx.request_context.session.elicit_form(message, schema, ctx.request_id)
    return f"Elicitation completed: action={result.action}, content={json.dumps(result.content or {})}"


@server.tool()
async def test_elicitation_sep1034_defaults(ctx: Context) -> str:
    """Elicitation whose fields carry defaults."""
    return await elicit_raw(ctx, "Please review and update the form fields with defaults", DEFAULTS_SCHEMA)


@server.tool()
async def test_elicitation_sep1330_enums(ctx: Context) -> str:
    """Elicitation with every enum form."""
    return await elicit_raw(ctx, "Please select options from the enum fields", ENUMS_SCHEMA)


@server.tool()
def json_schema_2020_12_tool(name: str | None = None, address: dict[str, Any] | None = None) -> str:
    """Tool with JSON Schema 2020-12 features."""
    return f"JSON Schema 2020-12 tool called with: {json.dumps({'name': name, 'address': address})}"


# The listed schema is the raw 2020-12 one: $schema, $defs with an $anchor, composition and
# conditional keywords, additionalProperties, all kept as written.
server._tool_manager._tools["json_schema_2020_12_tool"].parameters = {  # noqa: SLF001
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
    "allOf": [{"anyOf": [{"required": ["phone"]}, {"required": ["email"]}]}],
    "if": {"properties": {"contactMethod": {"const": "phone"}}, "required": ["contactMethod"]},
    "then": {"required": ["phone"]},
    "else": {"required": ["email"]},
    "additionalProperties": False,
}


@server.tool()
def test_custom_headers(
    region: Annotated[str, Field(json_schema_extra={"x-mcp-header": "Region"})],
) -> str:
    """A parameter mirrored into the Mcp-Param-Region header (the SDK checks they agree)."""
    return f"region={region}"


@server.tool()
async def test_trigger_tool_change(ctx: Context) -> str:
    """Tells the client the tool list changed (legacy session and 2026 listen streams)."""
    await ctx.notify_tools_changed()
    return "tool list changed"


@server.tool()
async def test_trigger_prompt_change(ctx: Context) -> str:
    """Tells the client the prompt list changed (legacy session and 2026 listen streams)."""
    await ctx.notify_prompts_changed()
    return "prompt list changed"


@server.tool()
async def test_reconnection(ctx: Context) -> str:
    """Closes its SSE stream mid-call; the answer arrives when the client resumes."""
    await ctx.close_sse_stream()
    await asyncio.sleep(0.1)
    return "Reconnection test completed successfully."


# ----- 2026-07-28: input-required results (the client answers and retries) -----

STATE_KEY = secrets.token_bytes(32)


def seal(state: dict[str, Any]) -> str:
    body = base64.urlsafe_b64encode(json.dumps(state).encode()).decode()
    mac = hmac.new(STATE_KEY, body.encode(), hashlib.sha256).hexdigest()
    return f"{body}.{mac}"


def unseal(token: str | None) -> dict[str, Any] | None:
    """The state in `token`; an error when it was altered."""
    if token is None:
        return None
    body, _, mac = token.rpartition(".")
    expected = hmac.new(STATE_KEY, body.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(mac, expected):
        raise MCPError(code=INVALID_PARAMS, message="requestState failed its integrity check")
    return json.loads(base64.urlsafe_b64decode(body))


def form(message: str, field: str, kind: str = "string") -> ElicitRequest:
    schema = {"type": "object", "properties": {field: {"type": kind}}, "required": [field]}
    return ElicitRequest(params=ElicitRequestFormParams(message=message, requested_schema=schema))


def sample(prompt: str, max_tokens: int = 50) -> CreateMessageRequest:
    return CreateMessageRequest(
        params=CreateMessageRequestParams(
            messages=[SamplingMessage(role="user", content=text(prompt))], max_tokens=max_tokens
        )
    )


def answered(ctx: Context, *keys: str) -> dict[str, Any] | None:
    """The client's answers to `keys`, or None while any is missing (extra keys are ignored)."""
    responses = ctx.input_responses or {}
    if all(key in responses for key in keys):
        return {key: responses[key] for key in keys}
    return None


def ask(requests: dict[str, Any], state: dict[str, Any] | None = None) -> InputRequiredResult:
    return InputRequiredResult(input_requests=requests, request_state=seal(state) if state is not None else None)


def content(response: Any) -> dict[str, Any]:
    return getattr(response, "content", None) or {}


@server.tool()
def test_input_required_result_elicitation(ctx: Context) -> CallToolResult | InputRequiredResult:
    """Asks for the user's name, then greets them."""
    got = answered(ctx, "user_name")
    if got is None:
        return ask({"user_name": form("What is your name?", "name")})
    return CallToolResult(content=[text(f"Hello, {content(got['user_name']).get('name')}!")])


@server.tool()
def test_streaming_elicitation(ctx: Context) -> CallToolResult | InputRequiredResult:
    """Needs the user's input mid-call: a stateless server asks for it in its result (never as a
    request of its own on the response stream)."""
    return test_input_required_result_elicitation(ctx)


@server.tool()
def test_input_required_result_sampling(ctx: Context) -> CallToolResult | InputRequiredResult:
    """Asks the client's LLM a question."""
    got = answered(ctx, "capital")
    if got is None:
        return ask({"capital": sample("What is the capital of France?")})
    return CallToolResult(content=[text(f"LLM said: {getattr(got['capital'].content, 'text', '')}")])


@server.tool()
def test_input_required_result_list_roots(ctx: Context) -> CallToolResult | InputRequiredResult:
    """Asks for the client's roots."""
    got = answered(ctx, "roots")
    if got is None:
        return ask({"roots": ListRootsRequest()})
    return CallToolResult(content=[text(json.dumps([str(r.uri) for r in got["roots"].roots]))])


def confirm_with_state(ctx: Context) -> CallToolResult | InputRequiredResult:
    """Asks for a confirmation with signed state; an altered state is an error."""
    state = unseal(ctx.request_state)
    got = answered(ctx, "confirm")
    if got is None or state is None:
        return ask({"confirm": form("Please confirm", "ok", "boolean")}, {"round": 1})
    return CallToolResult(content=[text(f"confirmed={content(got['confirm']).get('ok')} state={state}")])


@server.tool()
def test_input_required_result_request_state(ctx: Context) -> CallToolResult | InputRequiredResult:
    """Asks for a confirmation and keeps state the client echoes back."""
    return confirm_with_state(ctx)


@server.tool()
def test_input_required_result_multiple_inputs(ctx: Context) -> CallToolResult | InputRequiredResult:
    """Asks for an elicitation, a sample and the roots at once."""
    state = unseal(ctx.request_state)
    got = answered(ctx, "user_name", "greeting", "client_roots")
    if got is None or state is None:
        return ask(
            {
                "user_name": form("What is your name?", "name"),
                "greeting": sample("Generate a greeting"),
                "client_roots": ListRootsRequest(),
            },
            {"round": 1},
        )
    return CallToolResult(content=[text(f"Hello, {content(got['user_name']).get('name')}")])


@server.tool()
def test_input_required_result_multi_round(ctx: Context) -> CallToolResult | InputRequiredResult:
    """Two questions, one round each, the state growing between them."""
    state = unseal(ctx.request_state) or {}
    if state.get("name") is None:
        got = answered(ctx, "step1")
        if got is None:
            return ask({"step1": form("Step 1: What is your name?", "name")}, {"round": 1})
        state = {"round": 2, "name": content(got["step1"]).get("name")}
        return ask({"step2": form("Step 2: What is your favorite color?", "color")}, state)
    got = answered(ctx, "step2")
    if got is None:
        return ask({"step2": form("Step 2: What is your favorite color?", "color")}, state)
    return CallToolResult(content=[text(f"{state['name']} likes {content(got['step2']).get('color')}")])


@server.tool()
def test_input_required_result_tampered_state(ctx: Context) -> CallToolResult | InputRequiredResult:
    """Signs its state; an altered state is an error."""
    return confirm_with_state(ctx)


@server.tool()
def test_input_required_result_capabilities(ctx: Context) -> CallToolResult | InputRequiredResult:
    """Asks only for what the client declared it can answer."""
    caps = ctx.client_capabilities
    requests: dict[str, Any] = {}
    if caps is not None and caps.sampling is not None:
        requests["summary"] = sample("Summarize the request")
    if caps is not None and caps.elicitation is not None:
        requests["user_name"] = form("What is your name?", "name")
    if not requests or answered(ctx, *requests) is not None:
        return CallToolResult(content=[text("done")])
    return ask(requests)


@server.tool()
def test_missing_capability(ctx: Context) -> str:
    """Needs sampling; refuses clients that did not declare it."""
    caps = ctx.client_capabilities
    if caps is None or caps.sampling is None:
        raise MCPError(
            code=MISSING_REQUIRED_CLIENT_CAPABILITY,
            message="this tool needs the sampling capability",
            data={"requiredCapabilities": {"sampling": {}}},
        )
    return "sampling is declared"


@server.prompt()
def test_input_required_result_prompt(ctx: Context) -> list[UserMessage] | InputRequiredResult:
    """A prompt that needs context from the user first."""
    got = answered(ctx, "context")
    if got is None:
        return ask({"context": form("What context should the prompt use?", "context")})
    return [UserMessage(f"Prompt with context: {content(got['context']).get('context')}")]


# ----- resources -----


@server.resource("test://static-text", name="static-text", title="Static Text Resource", mime_type="text/plain")
def static_text() -> str:
    """A static text resource."""
    return "This is the content of the static text resource."


@server.resource("test://static-binary", name="static-binary", title="Static Binary Resource", mime_type="image/png")
def static_binary() -> bytes:
    """A static binary resource (an image)."""
    import base64

    return base64.b64decode(PNG)


@server.resource("test://template/{id}/data", name="template", title="Resource Template", mime_type="application/json")
def template(id: str) -> str:
    """A resource template with parameter substitution."""
    return json.dumps({"id": id, "templateTest": True, "data": f"Data for ID: {id}"})


@server.resource("test://watched-resource", name="watched-resource", title="Watched Resource", mime_type="text/plain")
def watched() -> str:
    """A resource clients may subscribe to."""
    return "Watched resource content"


# ----- prompts -----


@server.prompt(title="Simple Test Prompt")
def test_simple_prompt() -> list[UserMessage]:
    """A simple prompt without arguments."""
    return [UserMessage("This is a simple prompt for testing.")]


@server.prompt(title="Prompt With Arguments")
def test_prompt_with_arguments(arg1: str, arg2: str) -> list[UserMessage]:
    """A prompt with required arguments."""
    return [UserMessage(f"Prompt with arguments: arg1='{arg1}', arg2='{arg2}'")]


@server.prompt(title="Prompt With Embedded Resource")
def test_prompt_with_embedded_resource(resourceUri: str) -> list[UserMessage]:  # noqa: N803
    """A prompt that embeds a resource."""
    return [
        UserMessage(embedded(resourceUri, "text/plain", "Embedded resource content for testing.")),
        UserMessage("Please process the embedded resource above."),
    ]


@server.prompt(title="Prompt With Image")
def test_prompt_with_image() -> list[UserMessage]:
    """A prompt with an image."""
    return [
        UserMessage(ImageContent(type="image", data=PNG, mimeType="image/png")),
        UserMessage("Please analyze the image above."),
    ]


# ----- resumable streams -----


class MemoryEvents(EventStore):
    """Every event of every stream, so a client resuming with Last-Event-ID gets the rest."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, Any]] = []

    async def store_event(self, stream_id: str, message: Any) -> str:
        event_id = f"{stream_id}:{len(self.events)}"
        self.events.append((event_id, stream_id, message))
        return event_id

    async def replay_events_after(self, last_event_id: str, send_callback: Any) -> str | None:
        index = next((i for i, (eid, _, _) in enumerate(self.events) if eid == last_event_id), None)
        if index is None:
            return None
        stream_id = self.events[index][1]
        for event_id, sid, message in self.events[index + 1 :]:
            if sid == stream_id and message is not None:
                await send_callback(EventMessage(message, event_id))
        return stream_id


# ----- logging level and resource subscriptions (initialize-era methods) -----


async def set_level(ctx: Any, params: SetLevelRequestParams) -> EmptyResult:
    return EmptyResult()


async def subscribe(ctx: Any, params: SubscribeRequestParams) -> EmptyResult:
    return EmptyResult()


async def unsubscribe(ctx: Any, params: UnsubscribeRequestParams) -> EmptyResult:
    return EmptyResult()


lowlevel = server._lowlevel_server  # noqa: SLF001
lowlevel.add_request_handler("logging/setLevel", SetLevelRequestParams, set_level)
lowlevel.add_request_handler("resources/subscribe", SubscribeRequestParams, subscribe)
lowlevel.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, unsubscribe)


@server.completion()
async def complete(ref: Any, argument: Any, context: Any) -> Completion:
    return Completion(values=[], total=0, hasMore=False)


if __name__ == "__main__":
    server.run(
        "streamable-http", host="127.0.0.1", port=int(sys.argv[1]), event_store=MemoryEvents(), retry_interval=500
    )
