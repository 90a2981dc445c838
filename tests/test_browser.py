"""The real app in a real browser: `streamlit run app.py` driven by headless Chromium (Selenium).

Opens the Allocation page on the embedded model, waits for the plotly chart to be drawn, takes
a screenshot (kept in the test's tmp dir; copied to $ALPHALORA_SCREENSHOT_DIR when that is set, so a
test run never rewrites tracked files) and checks that it is not blank. A second test analyses a
tiny model, launches a fine-tune, visits another page while it trains and finds it still watched
when it comes back. Skips only where Debian's chromium/chromedriver are missing
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


def _screenshot(browser, shot: Path, log: Path) -> Path:
    """Save a screenshot in the test's tmp dir (copied to $ALPHALORA_SCREENSHOT_DIR when set:
    a test run never rewrites tracked files)."""
    assert browser.save_screenshot(str(shot)), log.read_text()
    if os.environ.get("ALPHALORA_SCREENSHOT_DIR"):
        keep = Path(os.environ["ALPHALORA_SCREENSHOT_DIR"])
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, keep / shot.name)
    return shot


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
    shot = _screenshot(browser, tmp_path / "allocation_page.png", log)
    assert shot.stat().st_size > 20_000
    assert _distinct_colours(shot) > 200  # a blank or half-rendered page has a handful


def _wait_idle(driver, timeout: float = 120) -> None:
    """Until the page has stopped changing (Streamlit finished its rerun)."""
    from selenium.webdriver.common.by import By

    deadline, last, same = time.monotonic() + timeout, None, 0
    while time.monotonic() < deadline:
        try:
            text = driver.find_element(By.CSS_SELECTOR, "[data-testid='stMain']").text
        except Exception:  # the page is being redrawn
            text = None
        same = same + 1 if text is not None and text == last else 0
        if same >= 3:
            return
        last = text
        time.sleep(0.5)


def _type_into(driver, label: str, value: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(By.CSS_SELECTOR, f"input[aria-label='{label}']")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(value, Keys.TAB)
    _wait_idle(driver)


@pytest.mark.slow
def test_a_running_fine_tune_stays_watched_across_page_switches(
    app_server, browser, tmp_path, monkeypatch
):
    """Analyse a tiny model, launch a fine-tune on a toy task, visit the Runs page while it
    trains, come back: the run is still watched, with its status line and Cancel; a cancel is
    then said plainly with Resume at hand."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait
    from train_helpers import save_tiny_model, toy_reviews, write_jsonl

    base, log = app_server
    home = tmp_path / "home"
    monkeypatch.setenv("ALPHALORA_HOME", str(home))
    model = save_tiny_model(tmp_path / "tiny-model")
    task = write_jsonl(tmp_path / "reviews.jsonl", toy_reviews(60))
    wait = WebDriverWait(browser, 180)

    def sidebar_link(name: str) -> None:
        link = wait.until(ec.element_to_be_clickable(
            (By.XPATH, f"//*[@data-testid='stSidebarNav']//a[contains(., '{name}')]")))  # fmt: skip
        link.click()
        wait.until(lambda d: d.current_url.rstrip("/").endswith(f"/{name}"))
        _wait_idle(browser)

    def live_text() -> str:
        text = browser.find_element(By.CSS_SELECTOR, "[data-testid='stMain']").text
        return text[text.find("4 · Live") :]

    from alphalora.runs import jobs
    from alphalora.store.run_store import RunStore

    try:
        browser.get(base)
        wait.until(ec.presence_of_element_located((By.XPATH, "//h1[contains(., 'AlphaLoRA')]")))
        _wait_idle(browser)
        browser.find_element(By.XPATH, "//label[contains(., 'Hugging Face hub id')]").click()
        _type_into(browser, "Hub id (org/name) or local folder — used when the third option is "
                   "selected", str(model))  # fmt: skip
        browser.find_element(By.XPATH, "//button[contains(., 'Analyse')]").click()
        _wait_idle(browser)
        sidebar = browser.find_element(By.CSS_SELECTOR, "[data-testid='stSidebar']").text
        assert str(model) in sidebar  # the sidebar follows at once

        sidebar_link("Fine-tune")
        browser.find_element(By.XPATH, "//label[contains(., 'Upload a JSONL/CSV file')]").click()
        _wait_idle(browser)
        browser.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(task))
        wait.until(lambda d: "48 training and 12 held-out" in d.page_source)
        for label, value in (("Steps", "2000"), ("Batch size", "4"), ("Max tokens per example",
                             "32"), ("Evaluate every (steps, 0 = end only)", "0"),
                             ("Held-out examples", "8")):  # fmt: skip
            _type_into(browser, label, value)
        browser.find_element(By.XPATH, "//button[contains(., 'Launch')]").click()
        wait.until(lambda d: "Launched 1 run(s)" in d.page_source)
        store = RunStore()
        run_id = store.list_runs()["run_id"].iloc[0]
        wait.until(lambda d: store.get_run(run_id)["status"] == "running")
        wait.until(lambda d: run_id in live_text() and "Cancel" in live_text())

        sidebar_link("Runs")
        assert run_id in browser.find_element(By.CSS_SELECTOR, "[data-testid='stMain']").text
        sidebar_link("Fine-tune")
        assert store.get_run(run_id)["status"] == "running"
        wait.until(lambda d: "Cancel" in live_text())
        text = live_text()
        assert run_id in text.split("Runs to watch", 1)[1]  # still watched after the visit
        assert "step " in text and "/2000" in text  # its status line
        assert (
            browser.find_element(By.CSS_SELECTOR, "input[aria-label='Steps']").get_attribute(
                "value"
            )
            == "2000"
        )  # settings kept too
        _screenshot(browser, tmp_path / "fine_tune_watched.png", log)

        browser.find_element(By.XPATH, "//button[contains(., 'Cancel')]").click()
        wait.until(lambda d: "cancelled at step" in live_text() and "Resume" in live_text())
        assert store.get_run(run_id)["status"] == "cancelled"
        assert not browser.find_elements(By.CSS_SELECTOR, "[data-testid='stException']")
    finally:  # a trainer runs in its own session: never leave one behind
        if (home / "runs.sqlite").exists():
            left = RunStore()
            for status in ("running", "queued"):
                for rid in left.list_runs(status=status)["run_id"]:
                    jobs.cancel_run(rid, store=left, timeout=15)
