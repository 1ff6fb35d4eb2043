"""Plays a person connecting an OAuth server on the gateway's credential page in a real
browser (Debian's Chromium via e2e/peers/browser.py): opens PAGE (a gateway
`/-/connections/{namespace}/{name}` URL), signs in at the gateway's OpenID provider as USER,
then either presses Connect and signs in at the upstream's authorization server as
UPSTREAM_USER (consent is implied there) until the browser is back on PAGE, or with
--disconnect presses Disconnect. Prints {"state": <what the page says the gateway holds>,
"notice": <the page's confirmation>}.

usage: connect_oauth.py PAGE USER PASSWORD (UPSTREAM_USER UPSTREAM_PASSWORD | --disconnect)
"""

import json
import sys
import time

from browser import BrowserError, authorize, chromium
from selenium.webdriver.common.by import By


def wait_for(driver, css: str, what: str) -> None:
    deadline = time.monotonic() + 20
    while not driver.find_elements(By.CSS_SELECTOR, css):
        if time.monotonic() > deadline:
            raise BrowserError(f"no {what} at {driver.current_url}")
        time.sleep(0.05)


def connect(page: str, user: str, password: str, upstream: tuple[str, str] | None) -> dict:
    """Signs in at PAGE as USER and connects as `upstream` (user, password), or disconnects
    when it is None; returns what the page then says."""
    with chromium() as driver:
        authorize(driver, page, user, password, until_prefix=page)
        wait_for(driver, "#state", "credential page")
        if upstream is None:
            driver.find_element(By.ID, "disconnect").click()
        else:
            upstream_user, upstream_password = upstream
            driver.find_element(By.ID, "connect").click()
            # Off to the upstream's sign-in, and back to the page once the gateway stored
            # the tokens (or to the gateway's error page, which authorize reports).
            deadline = time.monotonic() + 20
            while driver.current_url.startswith(page):
                if time.monotonic() > deadline:
                    raise BrowserError(f"Connect did not leave {driver.current_url}")
                time.sleep(0.05)
            try:
                authorize(driver, driver.current_url, upstream_user, upstream_password,
                          until_prefix=page)
            except BrowserError as e:
                body = driver.find_element(By.TAG_NAME, "body").text[:500]
                raise BrowserError(f"{e}; page says: {body}") from e
        wait_for(driver, "[role=status]", "confirmation")
        return {
            "state": driver.find_element(By.ID, "state").text,
            "notice": driver.find_element(By.CSS_SELECTOR, "[role=status]").text,
        }


def main() -> None:
    page, user, password = sys.argv[1:4]
    rest = sys.argv[4:]
    upstream = None if rest == ["--disconnect"] else (rest[0], rest[1])
    print(json.dumps(connect(page, user, password, upstream)))


if __name__ == "__main__":
    main()
