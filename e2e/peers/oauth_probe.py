"""Probes the gateway's authorization server the way an attacker or a careless client would,
and reports what it observed (the test that runs it holds the expectations).

usage: oauth_probe.py GATEWAY ROUTE_A ROUTE_B STATE_DIR USER PASSWORD attacks
       oauth_probe.py GATEWAY ROUTE_A ROUTE_B STATE_DIR USER PASSWORD cimd DOCS_PORT
       oauth_probe.py GATEWAY ROUTE_A ROUTE_B STATE_DIR USER PASSWORD flood COUNT
       oauth_probe.py GATEWAY ROUTE_A ROUTE_B STATE_DIR USER PASSWORD personal
       oauth_probe.py GATEWAY ROUTE_A ROUTE_B STATE_DIR USER PASSWORD replicas OTHER_REPLICA_URL

GATEWAY is the gateway's public URL, ROUTE_A and ROUTE_B two route paths USER may use,
STATE_DIR the gateway's --signin-state-dir (the expired-token case signs a token with the
gateway's own key from there, so only the expiry is wrong). USER signs in once in a real
browser (e2e/peers/browser.py); the probes then use that browser session's cookie.

Prints one JSON object: case name -> what was observed (statuses, OAuth error codes, whether
a redirect left the gateway, ...).
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
import re
import secrets
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx2
import jwt
from cryptography.hazmat.primitives.serialization import load_der_private_key

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
from browser import authorize, chromium  # noqa: E402

REDIRECT = "http://127.0.0.1:5555/cb"


class Probe:
    def __init__(self, gateway: str, route_a: str, route_b: str, state_dir: str, user: str, password: str):
        self.g = gateway.rstrip("/")
        self.a = self.g + route_a
        self.b = self.g + route_b
        # The tests' passthrough server, next to ROUTE_A.
        self.relay = self.g + route_a.replace("/tools/", "/relay/")
        self.state_dir = Path(state_dir)
        with chromium() as driver:
            authorize(driver, f"{self.g}/-/signin?next=/-/tokens", user, password, until_prefix=f"{self.g}/-/tokens")
            cookie = next(c for c in driver.get_cookies() if c["name"] == "mcpgate-session")
        self.http = httpx2.Client(timeout=15, follow_redirects=False)
        self.browser = httpx2.Client(
            timeout=15, follow_redirects=False, cookies={"mcpgate-session": cookie["value"]}, headers={"Origin": self.g}
        )

    # --- the client's side -------------------------------------------------------------
    def register(self, redirect_uris=None, method="none", **extra) -> httpx2.Response:
        body = {"redirect_uris": redirect_uris or ["http://127.0.0.1/cb"], "token_endpoint_auth_method": method,
                "client_name": "probe", **extra}
        return self.http.post(f"{self.g}/-/oauth/register", json=body)

    def client(self) -> str:
        response = self.register()
        assert response.status_code == 201, response.text
        return response.json()["client_id"]

    @staticmethod
    def pkce() -> tuple[str, str]:
        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        return verifier, challenge

    def authorize(self, client_id: str, challenge: str | None, **over) -> httpx2.Response:
        params = {"response_type": "code", "client_id": client_id, "redirect_uri": REDIRECT, "state": "st-1",
                  "code_challenge": challenge, "code_challenge_method": "S256", "resource": self.a}
        params.update(over)
        params = {k: v for k, v in params.items() if v is not None}
        return self.browser.get(f"{self.g}/-/oauth/authorize", params=params)

    @staticmethod
    def form_fields(page: str) -> dict:
        fields = dict(re.findall(r'name="(csrf|request)" value="([^"]*)"', page))
        return {k: html.unescape(v) for k, v in fields.items()}

    def consent(self, page: str, decision="allow", csrf: str | None = "keep") -> httpx2.Response:
        fields = self.form_fields(page)
        if csrf is None:
            fields.pop("csrf", None)
        elif csrf != "keep":
            fields["csrf"] = csrf
        fields["decision"] = decision
        return self.browser.post(f"{self.g}/-/oauth/authorize", data=fields)

    def code(self, client_id: str, **over) -> tuple[str, str]:
        verifier, challenge = self.pkce()
        page = self.authorize(client_id, challenge, **over)
        assert page.status_code == 200, (page.status_code, page.text[:500])
        answer = self.consent(page.text)
        query = parse_qs(urlsplit(answer.headers["location"]).query)
        return query["code"][0], verifier

    def token(self, **form) -> tuple[int, dict]:
        response = self.http.post(f"{self.g}/-/oauth/token", data=form)
        try:
            body = response.json()
        except ValueError:
            body = {}
        return response.status_code, body

    def redeem(self, client_id: str, code: str, verifier: str, **extra) -> tuple[int, dict]:
        form = {"grant_type": "authorization_code", "client_id": client_id, "code": code,
                "code_verifier": verifier, "redirect_uri": REDIRECT} | extra
        return self.token(**form)

    def mcp(self, url: str, token: str) -> int:
        body = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "probe", "version": "1"}}}
        response = self.http.post(url, json=body, headers={
            "Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream"})
        return response.status_code

    @staticmethod
    def where(response: httpx2.Response) -> dict:
        location = response.headers.get("location")
        query = parse_qs(urlsplit(location).query) if location else {}
        return {"status": response.status_code, "location": location.split("?")[0] if location else None,
                "error": query.get("error", [None])[0], "state": query.get("state", [None])[0],
                "iss": query.get("iss", [None])[0]}

    # --- the cases -----------------------------------------------------------------------
    def attacks(self) -> dict:
        seen: dict = {}
        cid = self.client()
        _, challenge = self.pkce()
        seen["pkce_missing"] = self.where(self.authorize(cid, None, code_challenge_method=None))
        seen["pkce_plain"] = self.where(self.authorize(cid, "x" * 43, code_challenge_method="plain"))
        seen["redirect_mismatch"] = self.where(self.authorize(cid, challenge, redirect_uri="http://127.0.0.1:5555/other"))
        seen["redirect_foreign"] = self.where(self.authorize(cid, challenge, redirect_uri="https://evil.example/cb"))
        seen["client_unknown"] = self.where(self.authorize("nobody", challenge))
        seen["resource_foreign"] = self.where(self.authorize(cid, challenge, resource="https://evil.example/mcp"))

        page = self.authorize(cid, challenge)
        seen["consent_page"] = {"status": page.status_code, "names_route": self.a in page.text,
                                "no_script": "<script" not in page.text}
        seen["consent_without_csrf"] = {"status": self.consent(page.text, csrf=None).status_code}
        seen["consent_wrong_csrf"] = {"status": self.consent(page.text, csrf="forged").status_code}
        seen["consent_denied"] = self.where(self.consent(page.text, decision="deny"))
        foreign = httpx2.Client(timeout=15, follow_redirects=False, headers={"Origin": "https://evil.example"},
                                cookies=self.browser.cookies)
        fields = self.form_fields(page.text) | {"decision": "allow"}
        seen["consent_cross_site"] = {"status": foreign.post(f"{self.g}/-/oauth/authorize", data=fields).status_code}

        code, verifier = self.code(cid)
        status, body = self.redeem(cid, code, "w" * 50)
        seen["verifier_wrong"] = {"status": status, "error": body.get("error")}
        status, body = self.redeem(cid, code, verifier, redirect_uri="http://127.0.0.1:5555/other")
        seen["token_redirect_mismatch"] = {"status": status, "error": body.get("error")}
        other = self.client()
        status, body = self.redeem(other, code, verifier)
        seen["code_other_client"] = {"status": status, "error": body.get("error")}

        code, verifier = self.code(cid)
        status, first = self.redeem(cid, code, verifier)
        before = self.mcp(self.a, first["access_token"])
        status2, body = self.redeem(cid, code, verifier)
        seen["code_replay"] = {"first": status, "replay": status2, "error": body.get("error"),
                               "access_before": before, "access_after": self.mcp(self.a, first["access_token"]),
                               "refresh_after": self.token(grant_type="refresh_token", client_id=cid,
                                                           refresh_token=first["refresh_token"])[0]}

        code, verifier = self.code(cid)
        _, t1 = self.redeem(cid, code, verifier)
        s2, t2 = self.token(grant_type="refresh_token", client_id=cid, refresh_token=t1["refresh_token"])
        rotated_works = self.mcp(self.a, t2["access_token"])
        s3, body = self.token(grant_type="refresh_token", client_id=cid, refresh_token=t1["refresh_token"])
        s4, _ = self.token(grant_type="refresh_token", client_id=cid, refresh_token=t2["refresh_token"])
        seen["refresh_replay"] = {"rotate": s2, "rotated_access": rotated_works, "replay": s3,
                                  "error": body.get("error"), "newest_after": s4,
                                  "access_after": self.mcp(self.a, t2["access_token"]),
                                  "new_refresh_differs": t1["refresh_token"] != t2["refresh_token"]}

        code, verifier = self.code(cid)
        _, scoped = self.redeem(cid, code, verifier)
        seen["route_audience"] = {"route_a": self.mcp(self.a, scoped["access_token"]),
                                  "route_b": self.mcp(self.b, scoped["access_token"])}
        code, verifier = self.code(cid, resource=None)
        _, wide = self.redeem(cid, code, verifier)
        seen["gateway_audience"] = {"route_a": self.mcp(self.a, wide["access_token"]),
                                    "route_b": self.mcp(self.b, wide["access_token"])}
        code, verifier = self.code(cid)
        status, body = self.redeem(cid, code, verifier, resource=self.b)
        seen["token_resource_widened"] = {"status": status, "error": body.get("error")}

        seen["expired"] = {"forged_fresh": self.mcp(self.a, self.forge(scoped["access_token"], 300)),
                           "forged_expired": self.mcp(self.a, self.forge(scoped["access_token"], -120))}

        code, verifier = self.code(cid)
        _, revoked = self.redeem(cid, code, verifier)
        before = self.mcp(self.a, revoked["access_token"])
        response = self.http.post(f"{self.g}/-/oauth/revoke", data={"token": revoked["refresh_token"], "client_id": cid})
        seen["revocation"] = {"before": before, "revoke": response.status_code,
                              "access_after": self.mcp(self.a, revoked["access_token"]),
                              "refresh_after": self.token(grant_type="refresh_token", client_id=cid,
                                                          refresh_token=revoked["refresh_token"])[0],
                              "unknown_token": self.http.post(f"{self.g}/-/oauth/revoke",
                                                              data={"token": "nonsense", "client_id": cid}).status_code}

        bad = self.register(["http://evil.example/cb"])
        seen["register_http_redirect"] = {"status": bad.status_code, "error": bad.json().get("error")}
        bad = self.register(["cursor://x/cb"], application_type="web")
        seen["register_private_scheme_web"] = {"status": bad.status_code, "error": bad.json().get("error")}
        secret = self.register(method="client_secret_post")
        sid, ssecret = secret.json()["client_id"], secret.json().get("client_secret")
        code, verifier = self.code(sid)
        status, body = self.redeem(sid, code, verifier)
        seen["confidential_without_secret"] = {"status": status, "error": body.get("error")}
        status, _ = self.redeem(sid, code, verifier, client_secret=ssecret)
        seen["confidential_with_secret"] = {"status": status}

        private = self.authorize("https://127.0.0.1:9/client.json", challenge)
        seen["cimd_private_address"] = {"status": private.status_code, "location": private.headers.get("location"),
                                        "says_why": "not a public address" in private.text,
                                        "leaks_address": False}
        named = self.authorize("https://localhost:9/client.json", challenge)
        seen["cimd_private_address"]["leaks_address"] = "127.0.0.1" in named.text or "resolves" in named.text

        code, verifier = self.code(cid, resource=None)
        _, wide = self.redeem(cid, code, verifier)
        relay = self.http.post(self.relay, json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "probe", "version": "1"}}},
            headers={"Authorization": f"Bearer {wide['access_token']}", "Accept": "application/json, text/event-stream"})
        seen["passthrough_gateway_token"] = {"status": relay.status_code,
                                             "says_why": "never forwards tokens it issued" in relay.text}
        not_json = self.http.post(f"{self.g}/-/oauth/register", content=json.dumps({"redirect_uris": ["http://127.0.0.1/cb"]}),
                                  headers={"Content-Type": "text/plain"})
        seen["register_not_json"] = {"status": not_json.status_code, "error": not_json.json().get("error")}
        return seen

    def forge(self, template: str, expires_in: int) -> str:
        """A token like `template`, signed with the gateway's own current key, expiring in
        `expires_in` seconds (negative: already expired)."""
        envelope = json.loads((self.state_dir / "keys" / "signing.json").read_text())
        newest = envelope["value"]["keys"][-1]
        der = base64.urlsafe_b64decode(newest["pkcs8"] + "=" * (-len(newest["pkcs8"]) % 4))
        claims = jwt.decode(template, options={"verify_signature": False})
        now = int(time.time())
        claims.update(iat=now, exp=now + expires_in, jti=secrets.token_urlsafe(8))
        return jwt.encode(claims, load_der_private_key(der, None), algorithm="ES256",
                          headers={"kid": newest["kid"], "typ": "at+jwt"})

    def cimd(self, port: int) -> dict:
        """Client metadata documents served on loopback (the gateway must allow private
        addresses for this): a good one completes the flow, a large one is refused."""
        base = f"http://127.0.0.1:{port}"
        documents = {
            "/client.json": json.dumps({"client_id": f"{base}/client.json", "client_name": "Probe via CIMD",
                                        "redirect_uris": ["http://127.0.0.1/cb"], "token_endpoint_auth_method": "none"}),
            "/large.json": json.dumps({"client_id": f"{base}/large.json", "redirect_uris": ["http://127.0.0.1/cb"],
                                       "padding": "x" * 70_000}),
            "/liar.json": json.dumps({"client_id": f"{base}/other.json", "redirect_uris": ["http://127.0.0.1/cb"]}),
        }

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                body = documents.get(self.path)
                self.send_response(200 if body else 404)
                self.send_header("content-type", "application/json")
                data = (body or "{}").encode()
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_):
                pass

        server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            seen = {}
            client_id = f"{base}/client.json"
            verifier, challenge = self.pkce()
            page = self.authorize(client_id, challenge)
            seen["consent"] = {"status": page.status_code, "shows_name": "Probe via CIMD" in page.text}
            answer = self.consent(page.text)
            code = parse_qs(urlsplit(answer.headers["location"]).query)["code"][0]
            status, tokens = self.redeem(client_id, code, verifier)
            seen["token"] = {"status": status, "access": self.mcp(self.a, tokens.get("access_token", ""))}
            for name in ("large", "liar"):
                response = self.authorize(f"{base}/{name}.json", challenge)
                seen[name] = {"status": response.status_code, "location": response.headers.get("location"),
                              "text": re.sub(r"<[^>]+>", " ", response.text)[-400:]}
            return seen
        finally:
            server.shutdown()

    def flood(self, count: int) -> dict:
        statuses = [self.register().status_code for _ in range(count)]
        last = self.register()
        return {"statuses": statuses, "retry_after": last.headers.get("retry-after"),
                "error": last.json().get("error")}

    def replicas(self, other: str) -> dict:
        """Tokens issued by this gateway used at another replica (`other`, its own base URL,
        same public URL and state), and a grant rotated at one, replayed at the other."""
        at_b = lambda url: url.replace(self.g, other.rstrip("/"), 1)  # noqa: E731
        cid = self.client()
        code, verifier = self.code(cid)
        _, first = self.redeem(cid, code, verifier)
        seen = {"a_issued_used_at_b": self.mcp(at_b(self.a), first["access_token"])}
        refreshed = self.http.post(f"{other}/-/oauth/token", data={
            "grant_type": "refresh_token", "client_id": cid, "refresh_token": first["refresh_token"]})
        second = refreshed.json()
        seen["refresh_at_b"] = refreshed.status_code
        seen["b_issued_used_at_a"] = self.mcp(self.a, second.get("access_token", ""))
        seen["replay_at_a"] = self.token(grant_type="refresh_token", client_id=cid,
                                         refresh_token=first["refresh_token"])[0]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and self.mcp(at_b(self.a), second["access_token"]) != 401:
            time.sleep(0.5)
        seen["revoked_at_b"] = self.mcp(at_b(self.a), second["access_token"])
        return seen

    def personal(self) -> dict:
        seen = {}
        page = self.browser.get(f"{self.g}/-/tokens")
        csrf = self.form_fields(page.text)["csrf"]
        route_a = urlsplit(self.a).path

        def create(name: str, route: str) -> str:
            created = self.browser.post(f"{self.g}/-/tokens", data={"csrf": csrf, "name": name, "days": "7", "route": route})
            found = re.search(r'<pre id="new-token">([^<]+)</pre>', created.text)
            return html.unescape(found.group(1)) if found else ""

        everywhere = create("laptop", "")
        only_a = create("ci", route_a)
        listing = self.browser.get(f"{self.g}/-/tokens").text
        seen["created"] = {"shape": everywhere.startswith("gpat1."), "listed": "laptop" in listing and "ci" in listing,
                           "secret_not_listed": everywhere not in listing}
        seen["use"] = {"everywhere_a": self.mcp(self.a, everywhere), "everywhere_b": self.mcp(self.b, everywhere),
                       "only_a_a": self.mcp(self.a, only_a), "only_a_b": self.mcp(self.b, only_a),
                       "everywhere_relay": self.mcp(self.relay, everywhere)}
        cid = self.client()
        code, verifier = self.code(cid)
        _, granted = self.redeem(cid, code, verifier)
        home = self.browser.get(f"{self.g}/-/").text
        grant_ids = re.findall(r'action="/-/grants/revoke">.*?name="id" value="([^"]+)"', home)
        before = self.mcp(self.a, granted["access_token"])
        revoked = self.browser.post(f"{self.g}/-/grants/revoke", data={"csrf": csrf, "id": grant_ids[0]}) if grant_ids else None
        seen["grants"] = {"listed": "probe" in home and len(grant_ids) == 1,
                          "revoke": revoked.status_code if revoked is not None else None,
                          "access_before": before, "access_after": self.mcp(self.a, granted["access_token"]),
                          "gone_from_list": revoked is not None and "/-/grants/revoke" not in revoked.text}
        call = subprocess.run(
            [sys.executable, str(Path(__file__).with_name("call.py")), self.a, "legacy", "call", "add",
             '{"a": 40, "b": 2}'], capture_output=True, text=True, timeout=60,
            env={**os.environ, "MCPGATE_BEARER": everywhere})
        seen["tool_call"] = json.loads(call.stdout) if call.returncode == 0 else {"failed": call.stderr[-300:]}
        home = self.browser.get(f"{self.g}/-/").text
        connect = self.browser.get(f"{self.g}/-/connect{route_a}").text
        seen["pages"] = {"home_lists_both": f"/-/connect{route_a}" in home
                         and f"/-/connect{urlsplit(self.b).path}" in home,
                         "connect_has_url": f"<pre id=\"url\">{self.a}</pre>" in connect,
                         "connect_has_clients": all(s in connect for s in
                                                    ("claude mcp add --transport http", "mcpServers", '"type": "http"'))}
        stored = "".join(p.read_text() for p in (self.state_dir / "tokens").glob("*.json"))
        seen["stored_hashed"] = {"secret_absent": everywhere.split(".")[-1] not in stored}
        no_csrf = self.browser.post(f"{self.g}/-/tokens", data={"name": "x", "days": "7", "route": ""})
        seen["create_without_csrf"] = {"status": no_csrf.status_code}
        ids = re.findall(r'name="id" value="([^"]+)"', listing)
        for token_id in ids:
            self.browser.post(f"{self.g}/-/tokens/revoke", data={"csrf": csrf, "id": token_id})
        seen["revoked"] = {"count": len(ids), "everywhere_a": self.mcp(self.a, everywhere),
                           "only_a_a": self.mcp(self.a, only_a)}
        return seen


def main() -> int:
    gateway, route_a, route_b, state_dir, user, password, mode, *rest = sys.argv[1:]
    probe = Probe(gateway, route_a, route_b, state_dir, user, password)
    if mode == "attacks":
        result = probe.attacks()
    elif mode == "cimd":
        result = probe.cimd(int(rest[0]))
    elif mode == "flood":
        result = probe.flood(int(rest[0]))
    elif mode == "replicas":
        result = probe.replicas(rest[0])
    elif mode == "personal":
        result = probe.personal()
    else:
        print(__doc__, file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
