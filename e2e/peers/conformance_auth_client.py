"""The client of the MCP conformance suite's `auth/*` scenarios, played by the gateway.

The suite starts an upstream MCP server and its authorization server, then runs this driver
with the upstream's URL as its last argument. The driver points a running standalone gateway
(sign-in on) at that URL: an McpServer with `OAuth2AuthorizationCode` and no endpoints (or
the pre-registered client the scenario's context gives), rendered by the operator's
standalone mode, which the gateway reloads. Then it acts as alice, with her bearer token for
MCP calls and her browser session at the gateway (signed in over plain HTTP at the people's
OpenID provider, e2e/peers/oidc_provider.mjs): it lists and calls tools through the gateway,
and each time the gateway answers that her authorization is needed (HTTP 401
McpAuthRequiredError), it follows the URL the gateway names and presses Connect; the suite's
authorization server approves at once and sends her back to the gateway's callback. At most
three authorizations; exits 0 when every call succeeded, 1 (saying why) otherwise.

Environment: MCPGATE_DRIVER, a JSON object {"gateway": URL, "manifests": DIR, "config": DIR,
"operator": PATH, "bearer": TOKEN, "user": NAME, "password": PASSWORD}, set by
e2e/tests/conformance.rs; MCP_CONFORMANCE_SCENARIO and MCP_CONFORMANCE_CONTEXT, set by the
suite.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx2 as httpx

NAMESPACE = "conformance"
MAX_AUTHORIZATIONS = 3
TIMEOUT = 10.0


class Failed(Exception):
    """The scenario cannot go on; the message says why."""


def manifest(name: str, upstream: str, context: dict, user: str) -> str:
    """The McpServer for the scenario's upstream, the pre-registered client's secret when the
    context names one, and alice's grant."""
    settings: dict = {}
    documents = []
    if "client_id" in context and "client_secret" in context:
        settings["clientId"] = context["client_id"]
        settings["clientSecretRef"] = {"name": f"{name}-client", "key": "secret"}
        # A client secret only ever goes to the token endpoint the McpServer names (the
        # provider's documented one: its issuer's /token here).
        settings["tokenUrl"] = context["issuer"].rstrip("/") + "/token"
        documents.append({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": f"{name}-client", "namespace": NAMESPACE,
                         "labels": {"mcpgate.dev/credential": "true"},
                         "annotations": {"mcpgate.dev/allowed-servers": name}},
            "stringData": {"secret": context["client_secret"]},
        })
    documents.append({
        "apiVersion": "mcpgate.dev/v1alpha1", "kind": "McpServer",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"remote": {"url": upstream},
                 "auth": {"type": "OAuth2AuthorizationCode", "oauth2AuthorizationCode": settings}},
    })
    documents.append({
        "apiVersion": "mcpgate.dev/v1alpha1", "kind": "McpCollaborator",
        "metadata": {"name": f"{name}-users", "namespace": NAMESPACE},
        "spec": {"targetRef": {"kind": "McpServer", "name": name}, "role": "User",
                 "subjects": [{"kind": "User", "name": user}]},
    })
    return "\n---\n".join(json.dumps(d) for d in documents) + "\n"


def render(setup: dict, name: str, yaml: str) -> None:
    manifests = Path(setup["manifests"])
    manifests.mkdir(parents=True, exist_ok=True)
    (manifests / f"{name}.yaml").write_text(yaml)
    out = subprocess.run(
        [setup["operator"], "standalone", "--input", str(manifests), "--output", setup["config"]],
        capture_output=True, text=True, timeout=60,
    )
    if out.returncode != 0:
        raise Failed(f"the standalone render failed: {out.stderr}")


def messages(response: httpx.Response) -> list[dict]:
    """The JSON-RPC messages of an MCP answer (JSON or an SSE stream)."""
    kind = response.headers.get("content-type", "")
    if kind.startswith("text/event-stream"):
        found = []
        for line in response.text.splitlines():
            if line.startswith("data:") and line[5:].strip():
                found.append(json.loads(line[5:]))
        return found
    if kind.startswith("application/json") and response.content:
        body = response.json()
        return body if isinstance(body, list) else [body]
    return []


class Alice:
    """Alice at the gateway: MCP calls with her bearer token, pages with her session. Calls
    speak the scenario's protocol revision: a session per call (2025-11-25), or stateless
    requests carrying their envelope in `_meta` and headers (2026-07-28)."""

    def __init__(self, setup: dict, url: str, revision: str):
        self.setup = setup
        self.url = url
        self.revision = revision
        self.pages = httpx.Client(timeout=TIMEOUT, follow_redirects=True)
        self.authorizations = 0

    def post(self, headers: dict, body: dict) -> httpx.Response:
        headers = {
            "authorization": f"Bearer {self.setup['bearer']}",
            "accept": "application/json, text/event-stream",
            "content-type": "application/json",
            "mcp-protocol-version": self.revision,
            **headers,
        }
        return httpx.post(self.url, headers=headers, json=body, timeout=TIMEOUT)

    def stateless(self, method: str, params: dict) -> httpx.Response:
        """One 2026-07-28 request."""
        params = {**params, "_meta": {
            "io.modelcontextprotocol/protocolVersion": self.revision,
            "io.modelcontextprotocol/clientCapabilities": {},
        }}
        headers = {"mcp-method": method}
        if "name" in params:
            headers["mcp-name"] = params["name"]
        return self.post(headers, {"jsonrpc": "2.0", "id": 2, "method": method, "params": params})

    def session(self) -> dict | httpx.Response:
        """A fresh MCP session's headers, or the gateway's refusal."""
        answer = self.post({}, {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": self.revision, "capabilities": {},
            "clientInfo": {"name": "conformance-auth-driver", "version": "1"}}})
        session = answer.headers.get("mcp-session-id")
        if answer.status_code != 200 or not session:
            return answer
        headers = {"mcp-session-id": session}
        self.post(headers, {"jsonrpc": "2.0", "method": "notifications/initialized"})
        return headers

    def request(self, method: str, params: dict) -> dict:
        """`method` in a fresh session, authorizing the gateway whenever it asks; the result."""
        while True:
            if self.revision >= "2026-07-28":
                answer = self.stateless(method, params)
            elif isinstance(headers := self.session(), dict):
                answer = self.post(headers, {"jsonrpc": "2.0", "id": 2, "method": method,
                                             "params": params})
            else:
                answer = headers
            if answer.status_code == 401 and self.needs_authorization(answer):
                continue
            found = messages(answer)
            last = found[-1] if found else {}
            if answer.status_code == 200 and "result" in last:
                return last["result"]
            raise Failed(f"{method}: HTTP {answer.status_code} {answer.text[:600]}")

    def needs_authorization(self, answer: httpx.Response) -> bool:
        """Follows the authorization URL of an McpAuthRequiredError; False for another 401."""
        try:
            body = answer.json()
        except ValueError:
            return False
        if not isinstance(body, dict) or body.get("error", {}).get("type") != "McpAuthRequiredError":
            return False
        if self.authorizations == MAX_AUTHORIZATIONS:
            raise Failed(f"the gateway still asks for authorization after {MAX_AUTHORIZATIONS}: {body}")
        self.authorizations += 1
        for url in body.get("authorization_urls", {}).values():
            self.connect(url)
        return True

    def sign_in(self, page: str) -> httpx.Response:
        """Opens `page`, signing in at the people's provider when the gateway sends her there."""
        response = self.pages.get(page)
        form = re.search(r'<form method="post" action="(/interaction/[^"]+/login)"', response.text)
        if form:
            login = httpx.URL(str(response.url)).join(form.group(1))
            response = self.pages.post(login, data={
                "username": self.setup["user"], "password": self.setup["password"]})
        if not str(response.url).startswith(page):
            raise Failed(f"signing in at the gateway ended at {response.url}: {response.text[:300]}")
        return response

    def connect(self, page: str) -> None:
        """Presses Connect on the gateway's page for a server and follows the provider."""
        response = self.sign_in(page)
        csrf = re.search(r'name="csrf" value="([^"]+)"', response.text)
        if not csrf:
            raise Failed(f"no Connect form at {page}: {response.text[:300]}")
        done = self.pages.post(page, data={"action": "connect", "csrf": csrf.group(1)})
        if "done=connected" not in str(done.url):
            text = re.sub(r"<[^>]+>", " ", done.text)
            raise Failed(f"the authorization did not complete (at {done.url}): {' '.join(text.split())[:600]}")


def main() -> int:
    setup = json.loads(os.environ["MCPGATE_DRIVER"])
    scenario = os.environ.get("MCP_CONFORMANCE_SCENARIO", "auth/unknown")
    context = json.loads(os.environ.get("MCP_CONFORMANCE_CONTEXT") or "{}")
    upstream = sys.argv[-1]
    # A server of its own per run: nothing carries over between scenarios.
    digest = hashlib.sha256(f"{scenario} {upstream}".encode()).hexdigest()[:8]
    name = re.sub(r"[^a-z0-9]+", "-", scenario.split("/")[-1].lower()).strip("-")[:30] + "-" + digest
    render(setup, name, manifest(name, upstream, context, setup["user"] + "@example.com"))
    url = f"{setup['gateway']}/{NAMESPACE}/mcp/{name}/server"
    alice = Alice(setup, url, os.environ.get("MCP_CONFORMANCE_PROTOCOL_VERSION", "2025-11-25"))
    deadline = time.monotonic() + 20
    while alice.stateless("ping", {}).status_code == 404:
        if time.monotonic() > deadline:
            raise Failed(f"the gateway did not load {name}")
        time.sleep(0.1)
    try:
        tools = alice.request("tools/list", {})
        names = [t["name"] for t in tools.get("tools", [])]
        if "test-tool" not in names:
            raise Failed(f"tools/list: {names}")
        for _ in range(2):
            result = alice.request("tools/call", {"name": "test-tool", "arguments": {}})
            if result.get("isError"):
                raise Failed(f"tools/call: {result}")
    except Failed as failed:
        print(f"{scenario}: {failed}", file=sys.stderr)
        return 1
    print(json.dumps({"scenario": scenario, "authorizations": alice.authorizations}))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Failed as failed:
        print(failed, file=sys.stderr)
        sys.exit(1)
