"""The real app in a real browser: `streamlit run app.py` driven by headless Chromium (Selenium).

Opens the Allocation page on the embedded model, waits for the plotly chart to be drawn, takes
a screenshot (kept in the test's tmp dir; copied to $ALPHALORA_SCREENSHOT_DIR when that is set, so a
test run never rewrites tracked files) and checks that it is not blank. Skips only where Debian's chromium/chromedriver are missing
(`make test` installs them with scripts/install_browser.sh).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROME_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1500,1100",
)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
        reason="needs /usr/bin/chromium and /usr/bin/chromedriver (run scripts/install_browser.sh)",
    ),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"streamlit exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"streamlit did not become healthy in {timeout} s:\n{log.read_text()}")


@pytest.fixture
def app_server(tmp_path, tmp_path_factory):
    """`streamlit run app.py` on a free port with a fresh data directory holding the
    embedded model's cached analysis (copied from the shared, once-per-session one)."""
    from test_app_pages import seeded_app_home

    seeded = seeded_app_home(tmp_path_factory)
    home = tmp_path / "home"
    shutil.copytree(seeded / "analyses", home / "analyses")
    port = _free_port()
    log = tmp_path / "streamlit.log"
    env = dict(os.environ, ALPHALORA_HOME=str(home), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    argv = [
        sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"),
        "--server.address", "127.0.0.1", "--server.port", str(port), "--server.headless", "true",
    ]  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_healthy(f"http://127.0.0.1:{port}/_stcore/health", proc, log)
        yield f"http://127.0.0.1:{port}", log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chrome-profile'}")
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _distinct_colours(png: Path) -> int:
    from PIL import Image

    with Image.open(png) as img:
        colours = img.convert("RGB").getcolors(maxcolors=1 << 20)
    return len(colours or [])


@pytest.mark.slow
def test_allocation_page_renders_its_chart_in_chromium(app_server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    base, log = app_server
    wait = WebDriverWait(browser, 180)
    browser.get(base)  # the home page first, then the sidebar link, as a user would
    wait.until(ec.presence_of_element_located((By.XPATH, "//h1[contains(., 'AlphaLoRA Studio')]")))
    link = wait.until(
        ec.element_to_be_clickable(
            (By.XPATH, "//*[@data-testid='stSidebarNav']//a[contains(., 'Allocation')]")
        )
    )
    link.click()
    wait.until(lambda d: d.current_url.rstrip("/").endswith("/Allocation"))
    chart = wait.until(
        ec.presence_of_element_located(
            (By.CSS_SELECTOR, "[data-testid='stPlotlyChart'] .js-plotly-plot")
        )
    )
    # The bars are drawn once plotly has laid the figure out (one path per layer).
    wait.until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, ".js-plotly-plot .barlayer path")) >= 30
    )
    title = browser.find_element(By.CSS_SELECTOR, ".js-plotly-plot .gtitle").text
    assert title.startswith("Experts per layer")
    assert chart.is_displayed()
    assert not browser.find_elements(By.CSS_SELECTOR, "[data-testid='stException']")
    time.sleep(1.0)  # let the last transitions settle before the picture
    shot = tmp_path / "allocation_page.png"
    assert browser.save_screenshot(str(shot)), log.read_text()
    if os.environ.get("ALPHALORA_SCREENSHOT_DIR"):
        keep = Path(os.environ["ALPHALORA_SCREENSHOT_DIR"])
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, keep / "allocation_page.png")
    assert shot.stat().st_size > 20_000
    assert _distinct_colours(shot) > 200  # a blank or half-rendered page has a handful
