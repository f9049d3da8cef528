"""The web dashboard in a real browser (Debian's chromium, headless, driven by Selenium through
chromedriver) against a live fleet: a real `edgepilot hub serve`, Mosquitto and real agents.

What a user would see: a wrong token refused with a message and the viewer token taken; the
devices listed with the model they run; a device killed turning offline on the page within 2 s
of the hub learning it (the hub's own `status_since` against the page's paint time); a canary
rollout's progress moving to 100 %; a device's charts with points, growing with live telemetry;
its logs; cards instead of a table on a phone; a link from `edgepilot ui` signing in once.
Screenshots go to build/test-artifacts/screenshots/ (CI keeps them).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from starlette.testclient import TestClient

from cloud_hub.api.app import create_app
from cloud_hub.api.ui import CSP
from cloud_hub.hub import Hub
from tests.conftest import REPO, run_cli
from tests.live_fleet import (
    LiveFleet,
    iris_model,
    live_fleet,  # noqa: F401
)
from tests.waiting import wait_until

SHOTS = REPO / "build" / "test-artifacts" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def _find(name: str, fallback: str) -> str:
    found = shutil.which(name) or (fallback if Path(fallback).exists() else None)
    if found is None:
        raise RuntimeError(
            f"{name} is not installed: scripts/test installs Debian's chromium and "
            "chromium-driver (apt-get)"
        )
    return found


def make_browser(width: int = 1400, height: int = 900) -> WebDriver:
    """Headless chromium (--no-sandbox: CI runs as root), its console kept for the test."""
    options = Options()
    options.binary_location = _find("chromium", CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-extensions",
        "--no-first-run",
        f"--window-size={width},{height}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(_find("chromedriver", CHROMEDRIVER)))


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    driver = make_browser()
    try:
        yield driver
    finally:
        driver.quit()


def shot(driver: WebDriver, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def wait(
    driver: WebDriver, condition: Callable[[WebDriver], Any], timeout: float, what: str
) -> Any:
    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(
        condition, message=f"timed out after {timeout}s waiting for {what}"
    )


def stats(driver: WebDriver, path: str = "") -> Any:
    return driver.execute_script(f"return window.epStats ? window.epStats{path} : null")


def rows(driver: WebDriver) -> dict[str, dict[str, str]]:
    """The overview's rows: device id -> {status, column key -> text}."""
    found: dict[str, dict[str, str]] = driver.execute_script(
        """
        const out = {};
        for (const tr of document.querySelectorAll('#devices tbody tr')) {
          const row = {status: tr.dataset.status};
          for (const td of tr.querySelectorAll('td')) row[td.dataset.col] = td.textContent;
          out[tr.dataset.id] = row;
        }
        return out;
        """
    )
    return found


def problems(driver: WebDriver) -> list[str]:
    """Console errors but the refused sign-in's 401: a CSP violation, an uncaught error."""
    return [
        str(e["message"])
        for e in driver.get_log("browser")
        if e["level"] == "SEVERE" and "status of 401" not in str(e["message"])
    ]


def sign_in(driver: WebDriver, token: str) -> None:
    box = wait(driver, lambda d: d.find_element(By.ID, "token"), 10, "the sign-in form")
    box.clear()
    box.send_keys(token)
    driver.find_element(By.ID, "signin-submit").click()


def test_the_page_is_public_static_and_locked_down(hub: Hub) -> None:
    """No data without a token; the page's own files with their security headers."""
    with TestClient(create_app(hub, scheduler=False, fleet=False)) as http:
        root = http.get("/", follow_redirects=False)
        assert root.status_code == 307 and root.headers["location"] == "/ui/"
        page = http.get("/ui/")
        assert page.status_code == 200 and 'type="module" src="app.js"' in page.text
        assert page.headers["content-security-policy"] == CSP
        assert CSP.startswith("default-src 'self'")
        assert page.headers["x-content-type-options"] == "nosniff"
        assert page.headers["cache-control"] == "no-store"
        assert "<script>" not in page.text  # nothing inline: the CSP would refuse it
        script = http.get("/ui/app.js")
        assert script.headers["content-type"].startswith("text/javascript")
        assert script.headers["cache-control"] == "no-cache"  # revalidated: a new version shows
        assert (
            http.get("/ui/app.js", headers={"if-none-match": script.headers["etag"]}).status_code
            == 304
        )
        assert http.get("/ui/vendor/uPlot.iife.min.js").status_code == 200
        assert http.get("/ui/vendor/uPlot-LICENSE.txt").text.startswith("The MIT License")
        missing = http.get("/ui/nothing-here.js")
        assert missing.status_code == 404 and "detail" in missing.json()
        assert http.get("/ui/../cloud_hub/settings.py").status_code == 404
        assert http.get("/api/v1/overview").status_code == 401
        assert http.get("/api/v1/stream").status_code == 401


@pytest.mark.slow
def test_the_dashboard_shows_the_live_fleet(live_fleet: LiveFleet, browser: WebDriver) -> None:  # noqa: F811
    fleet, driver = live_fleet, browser
    ids = fleet.device_ids
    driver.get(f"{fleet.url}/ui/")

    # a wrong token is refused, with a message; the viewer token is taken
    sign_in(driver, "ep_this-is-not-a-token")
    error = wait(
        driver,
        lambda d: (e := d.find_element(By.ID, "signin-error")).is_displayed() and e,
        10,
        "the refusal",
    )
    assert "did not accept" in error.text
    shot(driver, "01-signin-refused")
    sign_in(driver, fleet.viewer_token)

    # the overview lists every device, online, with the model deployed to it
    wait(driver, lambda d: set(rows(d)) == set(ids), 15, "the devices listed")
    wait(driver, lambda d: stats(d, ".stream") == "live", 15, "the stream connected")
    listed = rows(driver)
    for device_id in ids:
        assert listed[device_id]["status"] == "online", listed
        assert listed[device_id]["model"].startswith("live/iris:1"), listed
    assert driver.find_element(By.CSS_SELECTOR, '[data-count="online"] .count-value').text == "3"
    wait(driver, lambda d: all(r["cpu"] != "–" for r in rows(d).values()), 15, "telemetry shown")
    shot(driver, "02-overview")

    # a canary rollout of version 2: the page shows it move, canary first, to 100 %
    v2 = fleet.register_model(iris_model(48, 1))
    driver.get(f"{fleet.url}/ui/#/deployments")
    canary = fleet.deploy(
        str(v2["id"]), tag="live", strategy="canary", canary_count=1, promote_after_s=3
    )
    card = f'#deployments [data-id="{canary["id"]}"]'
    wait(
        driver,
        lambda d: d.find_elements(By.CSS_SELECTOR, f'{card}[data-state="canary"]'),
        20,
        "the canary phase shown",
    )
    shot(driver, "03-deployment-canary")
    wait(
        driver,
        lambda d: d.find_elements(By.CSS_SELECTOR, f'{card}[data-state="completed"]'),
        60,
        "the rollout completed on the page",
    )
    painted = stats(driver, f".progressPainted[{canary['id']}]")
    assert painted[-1] == 1.0, painted
    assert any(0 < p < 1 for p in painted), f"the progress never stood between: {painted}"
    assert "100% of 3" in driver.find_element(By.CSS_SELECTOR, f"{card} .dep-pct").text
    shot(driver, "04-deployment-completed")

    # a device killed: the broker publishes its last will, the row turns offline within 2 s
    # of the hub learning it
    driver.get(f"{fleet.url}/ui/#/")
    wait(driver, lambda d: set(rows(d)) == set(ids), 10, "the overview again")
    victim = ids[0]
    killed = time.time()
    fleet.stop_agent(victim)
    wait(driver, lambda d: rows(d)[victim]["status"] == "offline", 30, f"{victim} offline")
    seen = stats(driver, f".statusPainted['{victim}']")
    hub_since = next(d for d in fleet.overview()["devices"] if d["id"] == victim)["status_since"]
    assert seen["status"] == "offline" and seen["since"] == pytest.approx(hub_since)
    lag = seen["at"] / 1000 - hub_since
    assert 0 <= lag <= 2.0, f"painted {lag:.2f}s after the hub marked it offline"
    assert hub_since >= killed - 0.5
    assert driver.find_element(By.CSS_SELECTOR, '[data-count="offline"] .count-value').text == "1"
    assert rows(driver)[ids[1]]["status"] == "online"
    shot(driver, "05-device-offline")

    # a device's page: charts with the last hour's points, growing with live telemetry
    alive = ids[1]
    fleet.predict(alive, 20)
    driver.get(f"{fleet.url}/ui/#/device/{alive}")
    first = wait(driver, lambda d: (stats(d, ".charts") or {}).get("cpu"), 15, "cpu points")
    wait(driver, lambda d: stats(d, ".charts")["cpu"] > first, 15, "a live point added")
    figure = driver.find_element(By.CSS_SELECTOR, '[data-chart="cpu"]')
    assert int(figure.get_attribute("data-points") or 0) > first
    assert figure.find_elements(By.CSS_SELECTOR, "canvas")
    assert "live/iris:2" in driver.find_element(By.ID, "device-facts").text
    shot(driver, "06-device-charts")

    # its logs, as the hub stored them
    wait_logs = lambda: fleet.api_get(f"/devices/{alive}/logs")  # noqa: E731
    stored = wait_until(wait_logs, 30, "the predictions' logs at the hub")
    driver.get(f"{fleet.url}/ui/#/logs/{alive}")
    wait(
        driver,
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#logs tbody tr")) >= min(len(stored), 1),
        15,
        "the logs listed",
    )
    assert stored[0]["request_id"] in driver.find_element(By.ID, "logs").text
    shot(driver, "07-logs")

    # the alerts and endpoints views render what the hub says (none open, none served here)
    def shows(text: str) -> Callable[[WebDriver], bool]:
        return lambda d: text in d.find_element(By.ID, "main").text

    for view, text in (("alerts", "No open alerts."), ("endpoints", "No endpoints.")):
        driver.get(f"{fleet.url}/ui/#/{view}")
        wait(driver, shows(text), 10, view)
    print(f"offline painted {lag:.3f}s after the hub's status_since")

    # a phone: the table becomes cards, nothing wider than the screen
    driver.set_window_size(390, 844)
    driver.get(f"{fleet.url}/ui/#/")
    wait(driver, lambda d: set(rows(d)) == set(ids), 10, "the overview on a phone")
    layout = driver.execute_script(
        """
        const tr = document.querySelector('#devices tbody tr');
        return {head: getComputedStyle(document.querySelector('#devices thead')).display,
                row: getComputedStyle(tr).display, width: tr.getBoundingClientRect().width,
                view: window.innerWidth, page: document.documentElement.scrollWidth};
        """
    )
    assert layout["head"] == "none" and layout["row"] == "grid", layout
    assert layout["width"] <= layout["view"] and layout["page"] <= layout["view"], layout
    shot(driver, "08-phone-cards")

    # the page's update work stays small: no frame near 100 ms
    assert stats(driver, ".maxUpdateMs") < 100
    assert problems(driver) == []

    # `edgepilot ui` prints a link that signs in once
    driver.set_window_size(1400, 900)
    done = run_cli(["ui", "--hub", fleet.url, "--expires", "1h"], fleet.env)  # the admin token
    assert done.returncode == 0, done.stderr  # of the hub's data dir, as on the hub machine
    link = done.stdout.strip()
    assert link.startswith(f"{fleet.url}/ui/#token=ep_")
    assert "signs you in once" in done.stderr and "expires" in done.stderr
    token = link.split("#token=", 1)[1]
    viewer = httpx.get(f"{fleet.url}/api/v1/overview", headers={"Authorization": f"Bearer {token}"})
    assert viewer.status_code == 200  # a viewer token ...
    refused = httpx.post(
        f"{fleet.url}/api/v1/deployments",
        json={"version": "1", "tag": "live"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert refused.status_code == 403  # ... that can only look

    driver.get(link)
    wait(driver, lambda d: set(rows(d)) == set(fleet.device_ids), 15, "signed in by the link")
    assert "token" not in driver.current_url  # taken out of the address (and the history)
    assert driver.execute_script("return sessionStorage.getItem('edgepilot.token')") == token
    driver.refresh()  # kept for the tab's session
    wait(driver, lambda d: set(rows(d)) == set(fleet.device_ids), 15, "still signed in")
    driver.find_element(By.ID, "signout").click()
    wait(driver, lambda d: d.find_elements(By.ID, "signin"), 10, "signed out")
    assert driver.execute_script("return sessionStorage.getItem('edgepilot.token')") is None

    # without an admin token there is no link: a message and exit code 2
    env = {**fleet.env, "EDGEPILOT_DATA_DIR": str(fleet.root / "elsewhere")}
    denied = run_cli(["ui", "--hub", fleet.url, "--token", fleet.viewer_token], env)
    assert denied.returncode == 2 and "admin token" in denied.stderr
    assert fleet.viewer_token not in denied.stderr + denied.stdout
