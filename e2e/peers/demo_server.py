"""A real MCP server (the `mcp` Python SDK) for the demo and the tests.

usage: demo_server.py PORT
Serves Streamable HTTP at http://127.0.0.1:PORT/mcp (dual-era: initialize or server/discover).
"""

import asyncio
import sys

from mcp.server.mcpserver import MCPServer

server = MCPServer(name="mcpgate-demo", instructions="A demo server behind mcpgate.")


@server.tool()
def echo(text: str) -> str:
    """Returns the text it was given."""
    return text


@server.tool()
def add(a: int, b: int) -> int:
    """Adds two integers."""
    return a + b


@server.tool()
def blob(size: int) -> str:
    """Returns a string of `size` characters (for large-result tests)."""
    return "x" * size


@server.tool()
async def sleep(seconds: float) -> str:
    """Waits, then answers (for timeout tests)."""
    await asyncio.sleep(seconds)
    return "slept"


@server.tool()
def secret_tool() -> str:
    """A tool the gateway's deny list hides."""
    return "should never be reached through the gateway"


if __name__ == "__main__":
    server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[1]))
