"""A real MCP server built with fastmcp 4 (dual-era), for the tests.

usage: fastmcp_server.py PORT
Serves Streamable HTTP at http://127.0.0.1:PORT/mcp. Besides plain tools it reports
progress, asks the user (elicitation), and counts the calls that were cancelled (a client that
gives up on `wait` should show up in `cancelled`).
"""

import asyncio
import sys
from dataclasses import dataclass

from fastmcp import Context, FastMCP

server = FastMCP("fastmcp-upstream", instructions="A fastmcp server behind mcpgate.")
cancelled_calls = 0


@server.tool
def add(a: int, b: int) -> int:
    """Adds two integers."""
    return a + b


@server.tool
def echo(text: str) -> str:
    """Returns the text it was given."""
    return text


@server.tool
async def count(steps: int, ctx: Context) -> str:
    """Reports progress once per step."""
    for step in range(1, steps + 1):
        await ctx.report_progress(step, steps, f"step {step}")
        await asyncio.sleep(0.05)
    return f"counted {steps}"


@dataclass
class Name:
    name: str


@server.tool
async def greet(ctx: Context) -> str:
    """Asks the user for a name (elicitation), then greets them."""
    answer = await ctx.elicit("Who is calling?", Name)
    if answer.action != "accept":
        return f"no name ({answer.action})"
    return f"hello {answer.data.name}"


@server.tool
async def wait(seconds: float) -> str:
    """Waits; when the call is cancelled first, `cancelled` counts it."""
    global cancelled_calls
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        cancelled_calls += 1
        raise
    return "waited"


@server.tool
def cancelled() -> int:
    """How many `wait` calls were cancelled so far."""
    return cancelled_calls


if __name__ == "__main__":
    server.run("http", host="127.0.0.1", port=int(sys.argv[1]), show_banner=False)
