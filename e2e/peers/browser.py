"""A real browser for the OAuth tests: Debian's Chromium, headless, driven by selenium.

    with chromium() as driver:
        final = authorize(driver, url, "alice", "alice-pw", until_prefix="http://127.0.0.1:5000/callback")

`authorize` opens an authorization URL and plays the user: it signs in on the OpenID
provider's login form (e2e/peers/oidc_provider.mjs: inputs `username` and `password`, button
`sign-in`), answers the gateway's consent page (buttons `allow` / `deny`), and returns the
browser's URL as soon as it starts with `until_prefix` (the client's redirect URI; nothing
needs to listen there: the URL is read from the browser, not from a loaded page).

As a CLI, for debugging (prints the final URL):
    browser.py URL --user alice --password alice-pw --until PREFIX [--decision allow|deny]
               [--timeout 20] [--show-page]

Environment: MCPGATE_CHROMEDRIVER (default /usr/bin/chromedriver), MCPGATE_CHROMIUM (default
Debian's /usr/lib/chromium/chromium); both from apt (chromium, chromium-driver), installed by
e2e/peers/install.sh.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator

from selenium import webdriver
from selenium.common.exceptions import (
    NoSuchWindowException,
    StaleElementReferenceException,
    TimeoutException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

CHROMEDRIVER = os.environ.get("MCPGATE_CHROMEDRIVER", "/usr/bin/chromedriver")
CHROMIUM = os.environ.get(
    "MCPGATE_CHROMIUM",
    "/usr/lib/chromium/chromium" if os.path.exists("/usr/lib/chromium/chromium") else "/usr/bin/chromium",
)
# One page may take this long to load (a redirect target that accepts but never answers).
PAGE_LOAD_SECONDS = 10


class BrowserError(RuntimeError):
    """The browser did not get where it was asked to (the message says where it was)."""


@contextlib.contextmanager
def chromium(page_load_seconds: float = PAGE_LOAD_SECONDS) -> Iterator[webdriver.Chrome]:
    """A headless Chromium with a fresh, temporary profile (no cookies), quit on exit."""
    profile = tempfile.mkdtemp(prefix="mcpgate-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",  # the tests run as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--user-data-dir={profile}",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-sync",
        "--disable-component-update",
        "--password-store=basic",
        "--window-size=1024,768",
    ):
        options.add_argument(arg)
    # Forms are plain HTML: DOMContentLoaded is enough, no waiting on subresources.
    options.page_load_strategy = "eager"
    driver = None
    try:
        driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
        driver.set_page_load_timeout(page_load_seconds)
        driver.set_script_timeout(page_load_seconds)
        driver.implicitly_wait(0)
        yield driver
    finally:
        if driver is not None:
            with contextlib.suppress(Exception):
                driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _where(driver: webdriver.Chrome) -> str:
    """The current URL and page title, for error messages (never form contents)."""
    try:
        url, title = driver.current_url, driver.title
    except WebDriverException as e:
        return f"<browser unreachable: {e.msg}>"
    text = ""
    with contextlib.suppress(WebDriverException):
        errors = driver.find_elements(By.ID, "error")
        if errors:
            text = f", page error {errors[0].text!r}"
    return f"{url} (title {title!r}{text})"


def _current_url(driver: webdriver.Chrome) -> str:
    try:
        return driver.current_url
    except (NoSuchWindowException, TimeoutException):
        return ""


def _one(driver: webdriver.Chrome, by: str, value: str):
    found = driver.find_elements(by, value)
    return found[0] if found else None


def _left(driver: webdriver.Chrome, element, deadline: float) -> None:
    """Waits (until `deadline`) for the page holding `element` to be replaced."""
    while time.monotonic() < deadline:
        try:
            element.is_enabled()
        except StaleElementReferenceException:
            return
        except WebDriverException:
            return  # an error page or a closed window: the caller looks at the URL
        time.sleep(0.05)


def authorize(
    driver: webdriver.Chrome,
    url: str,
    user: str,
    password: str,
    decision: str = "allow",
    until_prefix: str = "http://127.0.0.1",
    timeout: float = 20.0,
) -> str:
    """Opens `url`, signs in at the IdP and answers the gateway's consent page when they
    appear, and returns the browser's URL once it starts with `until_prefix`.

    Raises BrowserError (saying which page it was stuck on) if that takes over `timeout` s,
    if the IdP refuses the password, or on an unexpected page error.
    """
    if decision not in ("allow", "deny"):
        raise ValueError(f"decision must be allow or deny, not {decision!r}")
    deadline = time.monotonic() + timeout
    steps: list[str] = []

    def step(name: str, action) -> None:
        steps.append(name)
        try:
            action()
        except TimeoutException:
            pass  # a slow or silent redirect target: the URL check below decides
        except WebDriverException as e:
            # Chromedriver reports navigations ending on an unreachable page (the client's
            # redirect URI with nothing listening) as errors; the browser is still there.
            if "net::ERR_" not in (e.msg or ""):
                raise

    step("open", lambda: driver.get(url))
    logins = 0
    answered = False
    while True:
        current = _current_url(driver)
        if current.startswith(until_prefix):
            return current
        if time.monotonic() > deadline:
            raise BrowserError(
                f"stuck after {timeout:.0f}s on {_where(driver)}, waiting for a URL starting "
                f"with {until_prefix} (steps: {' -> '.join(steps)})"
            )
        try:
            username = _one(driver, By.ID, "username")
            password_input = _one(driver, By.ID, "password")
            sign_in = _one(driver, By.ID, "sign-in")
            choice = _one(driver, By.ID, decision)
            if username and password_input and sign_in:
                if logins and _one(driver, By.ID, "error"):
                    raise BrowserError(f"the IdP refused the sign-in of {user!r}: {_where(driver)}")
                if logins >= 3:
                    raise BrowserError(f"the IdP keeps asking to sign in: {_where(driver)}")
                logins += 1
                username.clear()
                username.send_keys(user)
                password_input.clear()
                password_input.send_keys(password)
                step("sign-in", sign_in.click)
                _left(driver, sign_in, deadline)
                continue
            if choice and choice.tag_name == "button" and not answered:
                answered = True
                step(f"consent {decision}", choice.click)
                _left(driver, choice, deadline)
                continue
        except StaleElementReferenceException:
            continue  # the page changed under us: look again
        except WebDriverException as e:
            if "net::ERR_" not in (e.msg or ""):
                raise BrowserError(f"{e.msg} on {_where(driver)}") from e
        time.sleep(0.1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--until", required=True, help="the redirect URI prefix to stop at")
    parser.add_argument("--decision", default="allow", choices=["allow", "deny"])
    parser.add_argument("--timeout", type=float, default=20.0)
    parser.add_argument("--show-page", action="store_true", help="print the final page's source to stderr")
    args = parser.parse_args()
    with chromium() as driver:
        try:
            final = authorize(driver, args.url, args.user, args.password, args.decision, args.until, args.timeout)
        except BrowserError as e:
            print(f"browser.py: {e}", file=sys.stderr)
            if args.show_page:
                print(driver.page_source, file=sys.stderr)
            return 1
        if args.show_page:
            print(driver.page_source, file=sys.stderr)
    print(final)
    return 0


if __name__ == "__main__":
    sys.exit(main())
