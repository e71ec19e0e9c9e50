"""The dashboard in a real browser (Debian chromium, driven by chromedriver through selenium).

The page must show a live pool's workers, then a worker's death (its restart count and an event
in the log) without a reload, and must log no JavaScript error. It saves a screenshot of that
moment in the test's temporary directory; with ``MEMWISE_DASHBOARD_SCREENSHOT=docs/dashboard.png``
it writes the picture the docs show instead (a plain test run leaves the tree untouched).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from pathlib import Path

import pytest

from _server_tasks import grow_and_nap
from memwise import MemoryBudget, WorkerCrashed, WorkerPool
from memwise.server import serving

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

pytestmark = [
    # A safety net, far above a normal run (~15 s): chromium starts slowly on a busy machine.
    pytest.mark.timeout(180),
    pytest.mark.skipif(
        CHROMIUM is None or CHROMEDRIVER is None,
        reason="needs Debian's chromium and chromium-driver (apt-get install chromium "
        "chromium-driver); .ci/run installs them",
    ),
]


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="memwise-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--no-first-run",
        "--window-size=1440,1000",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_the_dashboard_shows_workers_and_a_death_live(browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 40, poll_frequency=0.1)
    with (
        WorkerPool(4, budget=MemoryBudget("2 GiB")) as pool,
        serving(pool, interval=0.25) as url,
    ):
        browser.get(url)

        def rows(driver):
            found = driver.find_elements(By.CSS_SELECTOR, "#workers tbody tr")
            pids = [row.find_element(By.CSS_SELECTOR, "td.pid").text for row in found]
            return len(found) == 4 and all(pid.isdigit() for pid in pids) and found

        wait.until(rows)
        assert "live" in browser.find_element(By.ID, "link").text

        # Work with keys and a memory footprint, so every column has something to show.
        futures = [
            pool.options(key=f"photo-{n % 6}.tif", memory="64 MiB").submit(
                grow_and_nap, 8 + 4 * (n % 5), 0.15
            )
            for n in range(200)
        ]
        wait.until(lambda d: d.find_element(By.ID, "c-done").text.replace(",", "") not in "0")

        victim = pool.snapshot().workers[1]
        assert victim.pid is not None
        os.kill(victim.pid, signal.SIGKILL)

        restarts = f'#workers tr[data-lane="{victim.lane}"] td.restarts'
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, restarts).text == "1")
        death = wait.until(
            lambda d: [
                item
                for item in d.find_elements(By.CSS_SELECTOR, "#events li.worker_died")
                if f"pid {victim.pid}" in item.text
            ]
        )
        assert f"lane {victim.lane}" in death[0].text
        new_pid = f'#workers tr[data-lane="{victim.lane}"] td.pid'

        def replaced(driver):
            shown = driver.find_element(By.CSS_SELECTOR, new_pid).text
            return shown.isdigit() and shown != str(victim.pid)

        wait.until(replaced)
        screenshot = Path(os.environ.get("MEMWISE_DASHBOARD_SCREENSHOT") or tmp_path / "d.png")
        assert browser.save_screenshot(str(screenshot))
        assert screenshot.read_bytes().startswith(PNG_SIGNATURE)
        for future in futures:  # work is still going on: stop what has not started
            future.cancel()
        for future in futures:
            if not future.cancelled():
                with contextlib.suppress(WorkerCrashed):  # the killed worker's task fails
                    future.result(timeout=40)

        errors = [
            entry for entry in browser.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")
        ]
        assert not errors, f"JavaScript errors on the dashboard: {errors}"
