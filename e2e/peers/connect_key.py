"""Plays a person at the gateway's credential page in a real browser (Debian's Chromium via
e2e/peers/browser.py): opens PAGE (a gateway `/-/connections/{namespace}/{name}` URL), signs
in at the OpenID provider as USER, and then enters KEY in the masked input and saves it, or
with --delete deletes the stored key. Prints {"state": <what the page says the gateway
holds>, "masked": <whether the key input is a password field>}.

usage: connect_key.py PAGE USER PASSWORD (KEY | --delete)
"""

import json
import sys
import time

from browser import BrowserError, authorize, chromium
from selenium.webdriver.common.by import By


def main() -> None:
    page, user, password, key = sys.argv[1:5]
    with chromium() as driver:
        authorize(driver, page, user, password, until_prefix=page)
        deadline = time.monotonic() + 10
        while not driver.find_elements(By.ID, "state"):
            if time.monotonic() > deadline:
                raise BrowserError(f"no credential page at {driver.current_url}")
            time.sleep(0.05)
        masked = None
        if key == "--delete":
            driver.find_element(By.ID, "delete").click()
        else:
            field = driver.find_element(By.ID, "key")
            masked = field.get_attribute("type") == "password"
            field.send_keys(key)
            driver.find_element(By.ID, "save").click()
        deadline = time.monotonic() + 10
        while not driver.find_elements(By.CSS_SELECTOR, "[role=status]"):
            if time.monotonic() > deadline:
                raise BrowserError(f"no confirmation at {driver.current_url}")
            time.sleep(0.05)
        state = driver.find_element(By.ID, "state").text
        print(json.dumps({"state": state, "masked": masked}))


if __name__ == "__main__":
    main()
