"""A real MCP client (the `mcp` Python SDK) that takes URL elicitations, playing an agent
whose user has not connected an upstream yet: it lists the tools of URL, calls TOOL, and
when the gateway asks for a URL elicitation it has the user complete it in a real browser
(e2e/peers/connect_oauth.py: signs in at the gateway and at the upstream's authorization
server as USER) and then retries.

  - MODE `legacy` (2025-11-25): the call fails with -32042 URLElicitationRequiredError; the
    client connects the elicitation whose URL names SERVER, waits (bounded) for
    `notifications/elicitation/complete` with its id on the session's stream, and calls again.
  - MODE `2026-07-28`: the call returns input_required with URL elicitations; the SDK hands
    each to the elicitation callback, which connects it and accepts, and the SDK retries.

Every request carries `Authorization: Bearer $MCPGATE_BEARER`. Prints one JSON object:
{"tools": [...] or null with "list_error", "elicitations": [{"url", "id"}...],
"completed": [ids], "text": [...]}.

usage: elicit.py URL MODE TOOL SERVER USER PASSWORD
"""

import asyncio
import json
import os
import sys

import anyio
from connect_oauth import connect
from mcp import Client, types
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError, UrlElicitationRequiredError

COMPLETION_WAIT = 15


async def main() -> None:
    url, mode, tool, server, user, password = sys.argv[1:7]
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {os.environ['MCPGATE_BEARER']}"})
    report: dict = {"elicitations": [], "completed": []}
    completed = anyio.Event()

    def browse(page: str) -> None:
        connect(page, user, password, (user, password))

    async def on_elicit(_context, params):
        if getattr(params, "mode", None) != "url":
            return types.ElicitResult(action="decline")
        report["elicitations"].append({"url": params.url, "id": getattr(params, "elicitation_id", None)})
        if f"/{server}" in params.url:
            await anyio.to_thread.run_sync(browse, params.url)
            return types.ElicitResult(action="accept")
        return types.ElicitResult(action="decline")

    async def on_message(message) -> None:
        root = getattr(message, "root", message)
        if getattr(root, "method", None) == "notifications/elicitation/complete":
            report["completed"].append(root.params.elicitation_id)
            completed.set()

    transport = streamable_http_client(url, http_client=http)
    async with Client(transport, mode=mode, elicitation_callback=on_elicit, message_handler=on_message) as client:
        try:
            report["tools"] = sorted(t.name for t in (await client.list_tools()).tools)
        except MCPError as error:
            # A single server needs the user's token even to list (a virtual server lists
            # what its members last listed).
            report["tools"] = None
            report["list_error"] = error.error.message
        try:
            result = await client.call_tool(tool, {})
        except MCPError as error:
            if error.error.code != -32042:
                raise
            elicitations = UrlElicitationRequiredError.from_error(error.error).elicitations
            mine = None
            for elicitation in elicitations:
                report["elicitations"].append({"url": elicitation.url, "id": elicitation.elicitation_id})
                if f"/{server}" in elicitation.url:
                    mine = elicitation
            if mine is None:
                raise
            await anyio.to_thread.run_sync(browse, mine.url)
            with anyio.fail_after(COMPLETION_WAIT):
                await completed.wait()
            result = await client.call_tool(tool, {})
        report["text"] = [c.text for c in result.content if getattr(c, "text", None) is not None]
        report["isError"] = result.is_error
    print(json.dumps(report))


asyncio.run(main())
