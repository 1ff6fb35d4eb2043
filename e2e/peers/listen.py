"""Waits (the `mcp` Python SDK) for the server to say its tool list changed, then lists the
tools again: on the session's GET stream in the initialize era, on a `subscriptions/listen`
stream in 2026-07-28.

usage: listen.py URL [MODE]   (MODE: legacy, the default, or 2026-07-28)
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
    mode = sys.argv[2] if len(sys.argv) > 2 else "legacy"
    async with Client(sys.argv[1], mode=mode, message_handler=on_message) as client:
        tools = await client.list_tools()
        if mode == "legacy":
            print(json.dumps(sorted(t.name for t in tools.tools)), flush=True)
            await asyncio.wait_for(changed.wait(), 30)
        else:
            async with client.listen(tools_list_changed=True) as subscription:
                print(json.dumps(sorted(t.name for t in tools.tools)), flush=True)
                async with asyncio.timeout(30):
                    async for _event in subscription:
                        break
        tools = await client.list_tools()
        print(json.dumps(sorted(t.name for t in tools.tools)), flush=True)


asyncio.run(main())
