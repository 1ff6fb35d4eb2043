"""A real MCP client signing in by OAuth, given nothing but the MCP server's URL.

usage: oauth_mcp.py --client mcp|fastmcp --url URL --user alice --password alice-pw
                    [--registration dcr|cimd] [--cimd-url HTTPS_URL]
                    [--call TOOL [--args JSON]] [--decision allow|deny]
                    [--mode auto|legacy|2026-07-28] [--auth-method omit|none|client_secret_basic|client_secret_post]
                    [--callback-host HOST] [--timeout SECONDS]

The client discovers the authorization server itself (401 -> RFC 9728 protected resource
metadata -> RFC 8414 authorization server metadata), registers (DCR, or CIMD with
--registration cimd when the server advertises it), and sends the user through the
authorization endpoint in a real browser (e2e/peers/browser.py: headless Chromium signs in at
the IdP and answers the consent page with --decision). Then it lists the tools and, with
--call, calls one. Clients:
  mcp      the `mcp` SDK's OAuthClientProvider; redirect URI http://127.0.0.1:<free port>/callback
           with nothing listening: the code is read from the browser's URL.
  fastmcp  fastmcp's OAuth helper with its webbrowser.open step replaced by the browser; its own
           loopback callback server (default host `localhost`, as fastmcp users get) receives the
           redirect.

Prints one JSON object: {"tools": [names], "call": <text of the first content item or null>,
"error": <message or null>, "http_status": <HTTP status of the failed MCP request, else null>}.
A tool result with isError sets "error" to "tool error: <text>". Exit 0 when the flow ran to
an outcome (also a denial or an HTTP 403: see "error"); 1 when the flow did not run (the browser
got stuck or the IdP refused the password, the server was unreachable), with the reason on
stderr; 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import time
import types
import warnings
from collections import deque
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import anyio
import httpx2
from selenium.common.exceptions import WebDriverException

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, str(Path(__file__).resolve().parent))
from browser import BrowserError, authorize, chromium  # noqa: E402


class HarnessError(RuntimeError):
    """The harness (not the server under test) failed."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def causes(error: BaseException):
    """`error`, then the members of exception groups and the causes/contexts, breadth first."""
    seen: set[int] = set()
    stack = deque([error])
    while stack:
        e = stack.popleft()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        if isinstance(e, BaseExceptionGroup):
            stack.extend(e.exceptions)
        stack.extend([e.__cause__, e.__context__])


def harness_failure(error: BaseException) -> BaseException | None:
    for e in causes(error):
        # httpx2.ConnectError: the MCP server (or its AS) was not even reachable.
        if isinstance(e, (BrowserError, WebDriverException, HarnessError, httpx2.ConnectError)):
            return e
    return None


def message(error: BaseException) -> str:
    """The most telling exception of the chain, as `Type: text`: an OAuth or MCP error if
    there is one, else the first that is neither a group nor a cancellation."""
    from mcp.client.auth import OAuthFlowError, OAuthRegistrationError, OAuthTokenError
    from mcp.shared.exceptions import MCPError

    cancelled = anyio.get_cancelled_exc_class()
    found = [
        e for e in causes(error)
        if not isinstance(e, (BaseExceptionGroup, cancelled, asyncio.CancelledError, GeneratorExit))
    ]
    preferred = (OAuthFlowError, OAuthRegistrationError, OAuthTokenError, MCPError)
    best = next((e for e in found if isinstance(e, preferred)), found[0] if found else error)
    return f"{type(best).__name__}: {best}" if str(best) else type(best).__name__


class StatusRecorder:
    """httpx response hook: the status of the latest response of the MCP endpoint."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.last: int | None = None

    async def __call__(self, response: httpx2.Response) -> None:
        request = response.request
        if str(request.url.copy_with(query=None)).rstrip("/") == self.url:
            self.last = response.status_code

    def failed(self) -> int | None:
        return self.last if self.last is not None and self.last >= 400 else None


class Browser:
    """The user at a browser: drives `authorize` from async code (in a worker thread)."""

    def __init__(self, driver, user: str, password: str, decision: str, timeout: float):
        self.driver, self.user, self.password = driver, user, password
        self.decision, self.timeout = decision, timeout
        self.final_urls: list[str] = []

    async def authorize(self, url: str, redirect_uri: str) -> str:
        final = await anyio.to_thread.run_sync(
            lambda: authorize(
                self.driver, url, self.user, self.password, self.decision,
                until_prefix=redirect_uri, timeout=self.timeout,
            )
        )
        self.final_urls.append(final)
        return final


def outcome(tools: list[str], call: str | None, error: str | None, status: int | None) -> dict:
    return {"tools": tools, "call": call, "error": error, "http_status": status}


async def run_session(client, args, recorder: StatusRecorder, list_tools, call_tool) -> dict:
    """Lists tools and calls one inside an open client; errors go to the JSON."""
    tools: list[str] = []
    try:
        tools = sorted(t.name for t in await list_tools())
    except Exception as e:  # noqa: BLE001 - reported in the JSON
        if harness_failure(e):
            raise
        return outcome(tools, None, message(e), recorder.failed())
    if not args.call:
        return outcome(tools, None, None, None)
    recorder.last = None
    try:
        result = await call_tool(args.call, json.loads(args.args))
    except Exception as e:  # noqa: BLE001
        if harness_failure(e):
            raise
        return outcome(tools, None, message(e), recorder.failed())
    texts = [c.text for c in result.content if getattr(c, "text", None) is not None]
    text = texts[0] if texts else None
    error = f"tool error: {text}" if (getattr(result, "is_error", None) or getattr(result, "isError", None)) else None
    return outcome(tools, text, error, None)


# --- the `mcp` SDK ---------------------------------------------------------------------------


class MemoryTokenStorage:
    """The SDK's TokenStorage protocol, in memory (a fresh client every run)."""

    def __init__(self):
        self.tokens = None
        self.client_info = None

    async def get_tokens(self):
        return self.tokens

    async def set_tokens(self, tokens) -> None:
        self.tokens = tokens

    async def get_client_info(self):
        return self.client_info

    async def set_client_info(self, client_info) -> None:
        self.client_info = client_info


async def run_mcp(args, browser: Browser) -> dict:
    from mcp import Client
    from mcp.client.auth import AuthorizationCodeResult, OAuthClientProvider, OAuthFlowError
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client
    from mcp.shared.auth import OAuthClientMetadata

    redirect_uri = f"http://127.0.0.1:{free_port()}/callback"
    metadata = {
        "client_name": "mcpgate e2e (mcp SDK)",
        "redirect_uris": [redirect_uri],
    }
    if args.auth_method != "omit":
        metadata["token_endpoint_auth_method"] = args.auth_method
    final: dict[str, str] = {}

    async def redirect_handler(authorization_url: str) -> None:
        final["url"] = await browser.authorize(authorization_url, redirect_uri)

    async def callback_handler() -> AuthorizationCodeResult:
        params = dict(parse_qsl(urlsplit(final.pop("url")).query))
        if "error" in params:
            raise OAuthFlowError(
                f"authorization failed: {params['error']}: {params.get('error_description', '')}".rstrip(": ")
            )
        if "code" not in params:
            raise OAuthFlowError(f"no code in the redirect (parameters {sorted(params)})")
        return AuthorizationCodeResult(code=params["code"], state=params.get("state"), iss=params.get("iss"))

    provider = OAuthClientProvider(
        server_url=args.url,
        client_metadata=OAuthClientMetadata.model_validate(metadata),
        storage=MemoryTokenStorage(),
        redirect_handler=redirect_handler,
        callback_handler=callback_handler,
        client_metadata_url=args.cimd_url if args.registration == "cimd" else None,
    )
    recorder = StatusRecorder(args.url)
    http = create_mcp_http_client(auth=provider)
    http.event_hooks["response"].append(recorder)
    client = Client(streamable_http_client(args.url, http_client=http), mode=args.mode, cache=None)
    try:
        async with http:
            async with client:
                async def list_tools():
                    page = await client.list_tools()
                    tools = list(page.tools)
                    while page.next_cursor:
                        page = await client.list_tools(cursor=page.next_cursor)
                        tools.extend(page.tools)
                    return tools

                return await run_session(client, args, recorder, list_tools, client.call_tool)
    except Exception as e:  # noqa: BLE001
        if harness_failure(e):
            raise
        return outcome([], None, message(e), recorder.failed())


# --- fastmcp ---------------------------------------------------------------------------------


async def wait_listening(host: str, port: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise HarnessError(f"fastmcp's callback server never listened on {host}:{port}") from None
            await anyio.sleep(0.05)


async def run_fastmcp(args, browser: Browser) -> dict:
    from fastmcp import Client
    from fastmcp.client.auth import OAuth
    from fastmcp.client.auth import oauth as fastmcp_oauth
    from fastmcp.client.transports import StreamableHttpTransport
    from mcp.shared._httpx_utils import create_mcp_http_client

    # fastmcp's redirect_handler (pre-flight GET of the authorization URL, then
    # webbrowser.open) stays; only the browser it would open is replaced.
    fastmcp_oauth.webbrowser = types.SimpleNamespace(open=lambda url, *a, **k: True)

    class BrowserOAuth(OAuth):
        async def redirect_handler(self, authorization_url: str) -> None:
            self.pending_url = authorization_url
            await super().redirect_handler(authorization_url)

        async def callback_handler(self):
            # fastmcp's own loopback callback server receives the redirect; the browser
            # starts once that server listens.
            url = self.pending_url
            redirect_uri = str(self.context.client_metadata.redirect_uris[0])

            async def drive() -> None:
                await wait_listening(self._callback_host, self.redirect_port, 10)
                await browser.authorize(url, redirect_uri)

            async with anyio.create_task_group() as tg:
                tg.start_soon(drive)
                return await super().callback_handler()

    recorder = StatusRecorder(args.url)

    def factory(headers=None, auth=None, timeout=None, **_ignored) -> httpx2.AsyncClient:
        # fastmcp's default client (create_mcp_http_client), plus the status recorder.
        http = create_mcp_http_client(headers=headers, timeout=timeout, auth=auth)
        http.event_hooks["response"].append(recorder)
        return http

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Using in-memory token storage")
        oauth = BrowserOAuth(
            client_name="mcpgate e2e (fastmcp)",
            callback_host=args.callback_host or "localhost",
            callback_timeout=args.timeout + 15,
            client_metadata_url=args.cimd_url if args.registration == "cimd" else None,
        )
        transport = StreamableHttpTransport(args.url, auth=oauth, httpx_client_factory=factory)
    client = Client(transport, mode=args.mode)

    async def call_tool(name, arguments):
        return await client.call_tool(name, arguments, raise_on_error=False)

    try:
        async with client:
            return await run_session(client, args, recorder, client.list_tools, call_tool)
    except Exception as e:  # noqa: BLE001
        if harness_failure(e):
            raise
        return outcome([], None, message(e), recorder.failed())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--client", required=True, choices=["mcp", "fastmcp"])
    parser.add_argument("--url", required=True, help="the MCP endpoint")
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--registration", default="dcr", choices=["dcr", "cimd"])
    parser.add_argument("--cimd-url", help="the client's metadata document URL (https, not the root)")
    parser.add_argument("--call", help="a tool to call after listing")
    parser.add_argument("--args", default="{}", help="its JSON arguments")
    parser.add_argument("--decision", default="allow", choices=["allow", "deny"])
    parser.add_argument("--mode", default="auto", help="auto, legacy or a protocol version")
    parser.add_argument(
        "--auth-method", default="omit",
        choices=["omit", "none", "client_secret_basic", "client_secret_post"],
        help="mcp client: token_endpoint_auth_method asked at DCR (omit: not sent, the SDK's default)",
    )
    parser.add_argument("--callback-host", help="fastmcp: its callback host (default fastmcp's: localhost)")
    parser.add_argument("--timeout", type=float, default=20.0, help="per browser pass, seconds")
    args = parser.parse_args()
    if args.registration == "cimd" and not args.cimd_url:
        parser.error("--registration cimd needs --cimd-url")
    try:
        json.loads(args.args)
    except ValueError as e:
        parser.error(f"--args is not JSON: {e}")

    try:
        with chromium() as driver:
            browser = Browser(driver, args.user, args.password, args.decision, args.timeout)
            run = run_mcp if args.client == "mcp" else run_fastmcp
            result = asyncio.run(run(args, browser))
    except Exception as e:  # noqa: BLE001
        cause = harness_failure(e) or e
        print(f"oauth_mcp.py: the flow did not run: {type(cause).__name__}: {cause}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
