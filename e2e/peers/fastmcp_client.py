"""A real MCP client built with fastmcp 4: runs one scenario against URL and prints JSON.

usage: fastmcp_client.py URL MODE SCENARIO [ARGS...]
MODE is `legacy`, `auto` or `2026-07-28`; with MCPGATE_BEARER set, every request carries
that bearer token. Scenarios:
  list                         -> sorted tool names
  call TOOL JSON_ARGUMENTS     -> {"isError": ..., "text": [...]}
  progress TOOL JSON_ARGUMENTS -> {"progress": [values], "text": [...]}
  elicit TOOL [JSON_ARGUMENTS] -> {"asked": [messages], "text": [...]}
  cancel WAIT_TOOL COUNT_TOOL  -> {"before": n, "after": m}: calls WAIT_TOOL, gives up after
                                  0.5 s, then asks COUNT_TOOL how many calls were cancelled
  list-changed TOOL [ARGS]     -> {"ready": true} once connected, then {"changed": true}
                                  after waiting (up to 20 s) for
                                  notifications/tools/list_changed, calling TOOL meanwhile
                                  (initialize era: fastmcp 4 has no subscriptions/listen)
  auth-required TOOL           -> {"status": 401, "body": {...}} or {"code", "message",
                                  "data"}: calls TOOL the way the reference docs' agent
                                  example does (an httpx client that reads error bodies) and
                                  reports the HTTP error, or the JSON-RPC error the SDK read
                                  from that 401's body
"""

import asyncio
import json
import os
import sys

import httpx2 as httpx

from fastmcp import Client
from fastmcp.client.messages import MessageHandler
from fastmcp.client.transports import StreamableHttpTransport
from mcp.shared.exceptions import MCPError


def texts(result) -> list[str]:
    return [c.text for c in result.content if getattr(c, "text", None) is not None]


def reading_error_bodies(**kwargs) -> httpx.AsyncClient:
    """An httpx client that loads 4xx/5xx bodies before the transport raises on them."""

    async def read(response: httpx.Response) -> None:
        if response.status_code >= 400:
            await response.aread()

    hooks = kwargs.pop("event_hooks", None) or {}
    hooks.setdefault("response", []).append(read)
    return httpx.AsyncClient(event_hooks=hooks, **kwargs)


async def auth_required(url: str, mode: str, tool: str) -> dict:
    token = os.environ.get("MCPGATE_BEARER")
    transport = StreamableHttpTransport(
        url, headers={"Authorization": f"Bearer {token}"}, httpx_client_factory=reading_error_bodies
    )
    try:
        async with Client(transport, mode=mode) as client:
            result = await client.call_tool(tool, {}, raise_on_error=False)
            return {"status": 200, "text": texts(result)}
    except Exception as raised:  # noqa: BLE001 - the error may come wrapped in groups
        if (error := found(raised, httpx.HTTPStatusError)) is not None:
            return {"status": error.response.status_code, "body": error.response.json()}
        # SDKs that read a JSON-RPC error in the 401 body raise it as such.
        if (error := found(raised, MCPError)) is not None:
            return {"code": error.error.code, "message": error.error.message, "data": error.error.data}
        raise


def found(raised: BaseException, kind: type):
    """The first exception of `kind` in `raised` or its exception groups."""
    if isinstance(raised, kind):
        return raised
    for inner in getattr(raised, "exceptions", ()):
        if (hit := found(inner, kind)) is not None:
            return hit
    return None


async def main() -> None:
    url, mode, scenario, args = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
    if scenario == "auth-required":
        print(json.dumps(await auth_required(url, mode, args[0])))
        return
    asked: list[str] = []
    changed = asyncio.Event()

    async def on_elicit(message, response_type, params, context):
        # Answers every string field the server asked for with "mcpgate".
        asked.append(message)
        schema = getattr(params, "requested_schema", None) or {}
        return {field: "mcpgate" for field in schema.get("properties", {"name": {}})}

    class OnChange(MessageHandler):
        async def on_tool_list_changed(self, message) -> None:
            changed.set()

    client = Client(
        StreamableHttpTransport(url, auth=os.environ.get("MCPGATE_BEARER")),
        mode=mode,
        elicitation_handler=on_elicit,
        message_handler=OnChange(),
    )
    async with client:
        if scenario == "list":
            out = sorted(t.name for t in await client.list_tools())
        elif scenario == "call":
            result = await client.call_tool(args[0], json.loads(args[1]), raise_on_error=False)
            out = {"isError": result.is_error, "text": texts(result)}
        elif scenario == "progress":
            progress: list[float] = []

            async def on_progress(value, total, message):
                progress.append(value)

            result = await client.call_tool(args[0], json.loads(args[1]), progress_handler=on_progress)
            out = {"progress": progress, "text": texts(result)}
        elif scenario == "elicit":
            result = await client.call_tool(args[0], json.loads(args[1]) if len(args) > 1 else {})
            out = {"asked": asked, "text": texts(result)}
        elif scenario == "cancel":
            count = lambda: client.call_tool(args[1], {})  # noqa: E731
            before = int(texts(await count())[0])
            try:
                await asyncio.wait_for(client.call_tool(args[0], {"seconds": 30}), 0.5)
            except TimeoutError:
                pass
            after = before
            for _ in range(50):  # the cancellation reaches the server asynchronously
                after = int(texts(await count())[0])
                if after > before:
                    break
                await asyncio.sleep(0.1)
            out = {"before": before, "after": after}
        elif scenario == "list-changed":
            await client.call_tool(args[0], json.loads(args[1]) if len(args) > 1 else {})
            print(json.dumps({"ready": True}), flush=True)
            for _ in range(200):
                if changed.is_set():
                    break
                await client.call_tool(args[0], json.loads(args[1]) if len(args) > 1 else {})
                await asyncio.sleep(0.1)
            out = {"changed": changed.is_set()}
        else:
            raise SystemExit(f"unknown scenario {scenario}")
    print(json.dumps(out))


asyncio.run(main())
