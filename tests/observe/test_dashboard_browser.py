"""Issue 17 must-show: headless Chromium (Debian's chromium + chromium-driver, driven by Selenium) loads the
dashboard of a running cluster behind an API key, finds the cluster's workers listed, and sees the charts
change after requests; the screenshot is saved under the test's tmp dir (its path is printed)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from cocoon_node.cluster import Cluster, worker_args
from tests.node.conftest import FAST, wait_until, worker_ids

pytestmark = pytest.mark.slow
KEY = "dashboard-test-key"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
needs_browser = pytest.mark.skipif(
    CHROMIUM is None or DRIVER is None,
    reason="no headless browser: install Debian's `chromium` and `chromium-driver` (.ci/run does, as root)")


def browser() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1100", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=str(DRIVER)), options=options)


def wait_for(driver: Any, condition: Callable[[Any], Any], timeout: float = 60) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(condition)


def chart(driver: Any, name: str) -> list[float]:
    points = driver.find_element("id", f"chart-{name}").get_attribute("data-points")
    return json.loads(points) if points else []


@needs_browser
async def test_dashboard_in_headless_chromium(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path / "cluster")  # with payments (EMULATED chain): channels show on the page
    async with cluster.running():
        req = await cluster.start_node("requester", ["--requester", "--local-cluster", "--allow-dev-tee",
                                                     "--api-port", "0", "--api-key", KEY])
        workers = [await cluster.start_node(f"w{i}", worker_args(req.addr, "synthetic", extra=FAST))
                   for i in range(2)]
        ids = {w.peer_id for w in workers}

        async def all_seen() -> bool:
            return ids <= await worker_ids(cluster)

        await wait_until(all_seen, timeout=60)
        api = str(req.ready["api_url"])
        one_time = str(req.ready["dashboard_url"])
        assert "once=" in one_time and KEY not in one_time

        def load_and_log_in(driver: Any) -> None:
            driver.get(api + "/dashboard")
            form_key = driver.find_element("name", "key")  # behind the key: the login form first
            form_key.send_keys(KEY)
            form_key.submit()
            wait_for(driver, lambda d: {row.get_attribute("data-peer")
                                        for row in d.find_elements("css selector", "#workers tr.worker")} >= ids)

        driver = await trio.to_thread.run_sync(browser)
        try:
            await trio.to_thread.run_sync(load_and_log_in, driver)
            text = await trio.to_thread.run_sync(lambda: driver.find_element("id", "workers").text)
            assert "synthetic-echo" in text and "dev-INSECURE" in text and "verified" in text
            banner = await trio.to_thread.run_sync(lambda: driver.find_element("id", "banner"))
            assert banner.is_displayed() and "dev-INSECURE" in banner.text
            # a few polls with nothing happening: the requests chart is flat at zero
            await trio.to_thread.run_sync(lambda: wait_for(driver, lambda d: len(chart(d, "rps")) >= 2))
            assert max(chart(driver, "rps")) == 0

            async with httpx.AsyncClient(timeout=60, headers={"authorization": f"Bearer {KEY}"}) as client:
                for i in range(4):
                    resp = await client.post(api + "/v1/chat/completions", json={
                        "model": "synthetic-echo", "messages": [{"role": "user", "content": f"word {i} " * 5}]})
                    assert resp.status_code == 200, resp.text
                bad = await client.post(api + "/v1/chat/completions", json={"model": "synthetic-echo"})
                assert bad.status_code == 400

            await trio.to_thread.run_sync(lambda: wait_for(driver, lambda d: max(chart(d, "rps")) > 0
                                                           and max(chart(d, "tps")) > 0
                                                           and max(chart(d, "ttft")) > 0))
            errors = await trio.to_thread.run_sync(lambda: wait_for(
                driver, lambda d: "messages" in d.find_element("id", "errors").text and d.find_element(
                    "id", "errors").text))
            assert "400" in errors
            channels = await trio.to_thread.run_sync(lambda: wait_for(
                driver, lambda d: d.find_elements("css selector", "#channels tbody tr td")
                and "payer" in d.find_element("id", "channels").text))
            assert channels
            shot = tmp_path / "dashboard.png"
            await trio.to_thread.run_sync(driver.save_screenshot, str(shot))
            assert shot.stat().st_size > 10_000
            print(f"\ndashboard screenshot: {shot}")
        finally:
            await trio.to_thread.run_sync(driver.quit)

        # The one-time link from the ready line: a fresh browser gets in once, then it is spent.
        def use_link(driver: Any) -> tuple[str, str]:
            driver.get(one_time)
            wait_for(driver, lambda d: d.find_elements("css selector", "#workers tr.worker"))
            landed = driver.current_url
            driver.delete_all_cookies()
            driver.get(one_time)
            return landed, driver.page_source

        fresh = await trio.to_thread.run_sync(browser)
        try:
            landed, second = await trio.to_thread.run_sync(use_link, fresh)
        finally:
            await trio.to_thread.run_sync(fresh.quit)
        assert landed.endswith("/dashboard") and "once=" not in landed
        assert "used already" in second and 'name="key"' in second
