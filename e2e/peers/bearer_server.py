"""An MCP server (the `mcp` Python SDK) that only answers requests carrying a bearer token it
validates itself, as a resource server does: an ES256 JWT signed by ISSUER's published keys,
with audience AUDIENCE and not expired. Anything else gets HTTP 401 with `WWW-Authenticate:
Bearer`. Its tools report who the token said the caller was.

usage: bearer_server.py PORT ISSUER AUDIENCE
Serves Streamable HTTP at http://127.0.0.1:PORT/mcp.

Tools:
  whoami        -> "<sub> <jti>" of the token this request carried
  forget_token  -> refuses the token this request carried from now on (the next request with
                   it gets 401, as after a revocation), answers "refused"
"""

import json
import sys
import urllib.request

import jwt
import uvicorn
from mcp.server.mcpserver import Context, MCPServer

PORT, ISSUER, AUDIENCE = int(sys.argv[1]), sys.argv[2].rstrip("/"), sys.argv[3]

with urllib.request.urlopen(f"{ISSUER}/.well-known/openid-configuration", timeout=10) as r:
    JWKS_URI = json.load(r)["jwks_uri"]
keys = jwt.PyJWKClient(JWKS_URI)
refused: set[str] = set()

server = MCPServer(name="bearer")


def claims_of(authorization: str | None) -> dict | None:
    if not authorization or not authorization.lower().startswith("bearer "):
        return None
    token = authorization[7:]
    try:
        key = keys.get_signing_key_from_jwt(token)
        claims = jwt.decode(token, key.key, algorithms=["ES256"], audience=AUDIENCE, issuer=ISSUER)
    except jwt.PyJWTError:
        return None
    return None if claims.get("jti") in refused else claims


def current(ctx: Context) -> dict:
    return claims_of((ctx.headers or {}).get("authorization")) or {}


@server.tool()
def whoami(ctx: Context) -> str:
    """The subject and token id of the caller's token."""
    claims = current(ctx)
    return f"{claims.get('sub')} {claims.get('jti')}"


@server.tool()
def forget_token(ctx: Context) -> str:
    """Refuses the token this request carried from now on."""
    refused.add(current(ctx).get("jti"))
    return "refused"


app = server.streamable_http_app()


async def guarded(scope, receive, send):
    if scope["type"] == "http":
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        if claims_of(headers.get("authorization")) is None:
            await send({"type": "http.response.start", "status": 401, "headers": [
                (b"www-authenticate", b'Bearer error="invalid_token"'),
                (b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": b'{"error":"invalid_token"}'})
            return
    await app(scope, receive, send)


if __name__ == "__main__":
    uvicorn.run(guarded, host="127.0.0.1", port=PORT, log_level="warning")
