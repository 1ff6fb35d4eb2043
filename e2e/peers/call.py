"""A real MCP client (the `mcp` Python SDK): lists tools or calls one and prints JSON.

usage: call.py URL MODE list
       call.py URL MODE call TOOL JSON_ARGUMENTS
       call.py URL MODE calls COUNT TOOL JSON_ARGUMENTS   (one session; each outcome, or the
                                                          JSON-RPC error that ended it)
MODE is `legacy` (initialize handshake) or a protocol version such as `2026-07-28`.
With MCPGATE_BEARER set, every request carries `Authorization: Bearer <it>`.
"""

import asyncio
import json
import os
import sys

from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


async def main() -> None:
    url, mode, action = sys.argv[1], sys.argv[2], sys.argv[3]
    server = url
    if token := os.environ.get("MCPGATE_BEARER"):
        http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
        server = streamable_http_client(url, http_client=http)
    async with Client(server, mode=mode) as client:
        if action == "list":
            result = await client.list_tools()
            print(json.dumps(sorted(t.name for t in result.tools)))
        elif action == "calls":
            outcomes = []
            for _ in range(int(sys.argv[4])):
                try:
                    result = await client.call_tool(sys.argv[5], json.loads(sys.argv[6]))
                    outcomes.append({"isError": result.is_error, "text": [c.text for c in result.content if getattr(c, "text", None) is not None]})
                except MCPError as error:
                    outcomes.append({"error": {"code": error.error.code, "message": error.error.message}})
            print(json.dumps(outcomes))
        else:
            result = await client.call_tool(sys.argv[4], json.loads(sys.argv[5]))
            texts = [c.text for c in result.content if getattr(c, "text", None) is not None]
            print(json.dumps({"isError": result.is_error, "text": texts}))


asyncio.run(main())
