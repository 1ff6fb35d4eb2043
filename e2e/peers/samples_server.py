"""A real MCP server (the `mcp` Python SDK) offering the tools that config/samples/ name, so a
test can point every sample at it and call each tool a Ready sample exposes.

usage: samples_server.py PORT
Serves Streamable HTTP at http://127.0.0.1:PORT/mcp (dual-era: initialize or server/discover).
Each tool answers "<tool> answered" and, when the request carried an Authorization header,
" with a credential" (never the credential itself).
"""

import sys

from mcp.server.mcpserver import Context, MCPServer

server = MCPServer(name="mcpgate-samples", instructions="Stands in for the samples' upstreams.")


def answer(tool: str, ctx: Context) -> str:
    request = ctx.request_context.request
    headers = getattr(request, "headers", None) or {}
    return f"{tool} answered" + (" with a credential" if "authorization" in headers else "")


@server.tool()
def read_wiki_structure(ctx: Context, repo: str = "") -> str:
    """Lists the documentation topics of a repository."""
    return answer("read_wiki_structure", ctx)


@server.tool()
def ask_question(ctx: Context, question: str = "") -> str:
    """Answers a question about a repository."""
    return answer("ask_question", ctx)


if __name__ == "__main__":
    server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[1]))
