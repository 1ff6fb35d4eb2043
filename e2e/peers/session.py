"""One long-lived MCP client session (the `mcp` Python SDK) that pauses between calls, so a
test can restart things underneath it.

usage: session.py URL MODE
Calls `echo` with "before", prints the result as a JSON line, waits for a line on stdin,
calls `echo` with "after" in the same session, prints that, and exits.
"""

import asyncio
import json
import sys

from mcp import Client


async def main() -> None:
    url, mode = sys.argv[1], sys.argv[2]
    async with Client(url, mode=mode) as client:
        for text in ("before", "after"):
            result = await client.call_tool("echo", {"text": text})
            print(json.dumps([c.text for c in result.content]), flush=True)
            if text == "before":
                await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


asyncio.run(main())
