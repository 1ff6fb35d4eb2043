"""An MCP server (the `mcp` Python SDK) whose one tool says which value of a request header
it received: what the gateway sent this upstream.

usage: headers_server.py PORT
Serves Streamable HTTP at http://127.0.0.1:PORT/mcp.
"""

import sys

from mcp.server.mcpserver import Context, MCPServer

server = MCPServer(name="headers")


@server.tool()
def header(name: str, ctx: Context) -> str:
    """The value of request header `name` as this server received it ("-" when absent)."""
    return (ctx.headers or {}).get(name.lower(), "-")


if __name__ == "__main__":
    server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[1]))
