"""Relays through the gateway, seen by a real client (the `mcp` Python SDK): progress
notifications of one tool call and, in the initialize era, an elicitation round trip.

usage: relay.py URL MODE PROGRESS_TOOL [ELICITATION_TOOL]
Prints {"progress": [...], "result": [...], "elicitation": [...]} as JSON.
"""

import asyncio
import json
import sys

from mcp import Client, types


async def main() -> None:
    url, mode, progress_tool = sys.argv[1], sys.argv[2], sys.argv[3]
    elicitation_tool = sys.argv[4] if len(sys.argv) > 4 else None
    asked = []

    async def on_elicit(context, params):
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={"name": "mcpgate", "check": True})

    progress = []

    async def on_progress(value, total, message):
        progress.append(value)

    out = {}
    async with Client(url, mode=mode, elicitation_callback=on_elicit) as client:
        result = await client.call_tool(
            progress_tool, {"duration": 1, "steps": 3}, progress_callback=on_progress
        )
        out["progress"] = progress
        out["result"] = [c.text for c in result.content if getattr(c, "text", None)]
        if elicitation_tool:
            result = await client.call_tool(elicitation_tool, {})
            out["elicitation"] = [c.text for c in result.content if getattr(c, "text", None)]
            out["asked"] = asked
    print(json.dumps(out))


asyncio.run(main())
