"""Waits, in one initialize-era session (the `mcp` Python SDK), for the server to say its tool
list changed, then lists the tools again.

usage: listen.py URL
Prints the tool names as a JSON line, then, once `notifications/tools/list_changed` arrives
(within 30 s), the new tool names as a second JSON line.
"""

import asyncio
import json
import sys

from mcp import Client

changed = asyncio.Event()


async def on_message(message) -> None:
    if getattr(message, "method", None) == "notifications/tools/list_changed":
        changed.set()


async def main() -> None:
    async with Client(sys.argv[1], mode="legacy", message_handler=on_message) as client:
        tools = await client.list_tools()
        print(json.dumps(sorted(t.name for t in tools.tools)), flush=True)
        await asyncio.wait_for(changed.wait(), 30)
        tools = await client.list_tools()
        print(json.dumps(sorted(t.name for t in tools.tools)), flush=True)


asyncio.run(main())
