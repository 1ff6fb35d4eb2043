"""A real MCP client (the `mcp` Python SDK): lists tools or calls one and prints JSON.

usage: call.py URL MODE list
       call.py URL MODE call TOOL JSON_ARGUMENTS
MODE is `legacy` (initialize handshake) or a protocol version such as `2026-07-28`.
"""

import asyncio
import json
import sys

from mcp import Client


async def main() -> None:
    url, mode, action = sys.argv[1], sys.argv[2], sys.argv[3]
    async with Client(url, mode=mode) as client:
        if action == "list":
            result = await client.list_tools()
            print(json.dumps(sorted(t.name for t in result.tools)))
        else:
            result = await client.call_tool(sys.argv[4], json.loads(sys.argv[5]))
            texts = [c.text for c in result.content if getattr(c, "text", None) is not None]
            print(json.dumps({"isError": result.is_error, "text": texts}))


asyncio.run(main())
