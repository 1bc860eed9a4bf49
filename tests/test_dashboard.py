"""The dashboard in a real headless browser (Debian's chromium and chromedriver, driven by Selenium): log in, open a
flag, see its pictures, acknowledge it, log out, and be refused without a login. Plus what a browser does not show:
CSRF tokens required, sessions that expire, no patient identifiers in URLs.

It runs on the demo's own archive (``deepbrainprint demo --quick``: real people over real DICOM associations), so
it shows the demo's two planted cases, the possible_duplicate and the identity_mismatch, with their real pictures.
"""

from __future__ import annotations

import re
import shutil
import threading
import time
from pathlib import Path

import pytest
import requests
from werkzeug.security import generate_password_hash
from werkzeug.serving import make_server

from deepbrainprint.dashboard.app import DashboardConfig, create_app, parse_users
from fingerprint.identity.archive import ArchiveConfig
from fingerprint.model.fingerprinter import load_model

SCREENSHOTS = Path(__file__).resolve().parent / "screenshots"
PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def archive_with_flags(quick_demo):
    from deepbrainprint.settings import load_settings

    model = load_model()
    if model.model_version.startswith("untrained"):
        pytest.skip("no shipped weights")
    if "Flags report: 2 flags" not in quick_demo["text"]:
        pytest.skip("the demo ran without the shared data's real people: not the two planted flags to show")
    return load_settings(home=quick_demo["home"]).archive_config(), model


def serve(config: DashboardConfig):
    server = make_server("127.0.0.1", 0, create_app(config), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, f"http://127.0.0.1:{server.server_port}"


def dashboard_config(archive_config: ArchiveConfig, model, minutes: float = 30.0) -> DashboardConfig:
    users = parse_users(f"alice:{generate_password_hash(PASSWORD)}")
    return DashboardConfig(store_url=archive_config.store_url, users=users, secret_key=b"test-key-" + b"x" * 32,
                           session_minutes=minutes, model=model)


@pytest.fixture
def browser():
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("Debian's chromium and chromium-driver are not installed (deploy/install-system.sh)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1100"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    yield driver
    driver.quit()


def test_log_in_open_a_flag_see_its_pictures_acknowledge_it_and_log_out(archive_with_flags, browser) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as shown
    from selenium.webdriver.support.ui import Select, WebDriverWait

    def wait_for(condition):  # noqa: ANN001, ANN202 - after each click, wait for the next page, never sleep
        return WebDriverWait(browser, 15).until(condition)

    archive_config, model = archive_with_flags
    server, base = serve(dashboard_config(archive_config, model))
    try:
        browser.get(base + "/")
        assert browser.current_url.endswith("/login")  # refused without a login
        browser.find_element(By.ID, "username").send_keys("alice")
        browser.find_element(By.ID, "password").send_keys("wrong password")
        browser.find_element(By.ID, "login").click()
        assert "Wrong user or password" in wait_for(shown.presence_of_element_located((By.ID, "login-error"))).text
        browser.find_element(By.ID, "username").send_keys("alice")
        browser.find_element(By.ID, "password").send_keys(PASSWORD)
        browser.find_element(By.ID, "login").click()
        links = wait_for(shown.presence_of_all_elements_located((By.CLASS_NAME, "flag-link")))
        assert [row.text for row in browser.find_elements(By.CSS_SELECTOR, "table.list td:nth-child(3)")] == [
            "identity_mismatch", "possible_duplicate"]
        links[0].click()
        wait_for(shown.presence_of_element_located((By.ID, "review-submit")))
        images = browser.find_elements(By.TAG_NAME, "img")
        assert len(images) >= 4 and all(int(img.get_property("naturalWidth")) > 0 for img in images)
        captions = " | ".join(e.text for e in browser.find_elements(By.TAG_NAME, "figcaption"))
        assert "the new scan's canonical slice" in captions and "3D verification" in captions
        assert "what the fingerprint looked at" in captions
        SCREENSHOTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(SCREENSHOTS / "evidence-view.png"))
        assert re.fullmatch(rf"{base}/flags/F\d+", browser.current_url)  # the URL names the flag only
        Select(browser.find_element(By.ID, "review-state")).select_by_value("resolved")
        browser.find_element(By.ID, "review-comment").send_keys("moved to the right patient")
        browser.find_element(By.ID, "review-submit").click()
        wait_for(shown.text_to_be_present_in_element((By.TAG_NAME, "h2"), "[resolved]"))
        assert "alice: moved to the right patient" in browser.page_source
        browser.find_element(By.ID, "logout").click()
        wait_for(shown.presence_of_element_located((By.ID, "login")))
        browser.get(base + "/")
        assert browser.current_url.endswith("/login")
    finally:
        server.shutdown()


def test_forms_need_their_csrf_token_and_sessions_expire(archive_with_flags) -> None:
    archive_config, model = archive_with_flags
    server, base = serve(dashboard_config(archive_config, model, minutes=0.04))  # 2.4 s sessions
    try:
        http = requests.Session()
        assert http.post(base + "/login", data={"username": "alice", "password": PASSWORD}).status_code == 400
        token = re.search(r'name="csrf_token" value="([^"]+)"', http.get(base + "/login").text).group(1)
        logged_in = http.post(base + "/login", data={"username": "alice", "password": PASSWORD, "csrf_token": token})
        assert logged_in.status_code == 200 and "Flags" in logged_in.text
        assert "script-src" not in logged_in.headers["Content-Security-Policy"]  # default-src 'none': no scripts
        flag = re.search(r'href="/flags/(F\d+)"', logged_in.text).group(1)
        refused = http.post(f"{base}/flags/{flag}/review", data={"state": "false_alarm"})
        assert refused.status_code == 400  # no token: refused, nothing stored
        assert "DEMO-" not in logged_in.text  # patients appear as keyed hashes only
        time.sleep(3.0)
        assert http.get(base + "/", allow_redirects=False).status_code == 302  # the session has expired
    finally:
        server.shutdown()


def test_metrics_count_the_queue_the_verdicts_and_the_open_flags_without_a_login(archive_with_flags, quick_demo) -> None:
    from deepbrainprint.settings import load_settings

    archive_config, model = archive_with_flags
    settings = load_settings(home=quick_demo["home"])
    config = dashboard_config(archive_config, model)
    config.ledger_url, config.spool_dir = archive_config.store_url, settings.resolved_spool_dir
    server, base = serve(config)
    try:
        response = requests.get(base + "/metrics")
    finally:
        server.shutdown()
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/plain")
    samples = dict(line.rsplit(" ", 1) for line in response.text.splitlines() if line and not line.startswith("#"))
    assert samples['dbp_series_recorded{verdict="possible_duplicate"}'] == "1"
    assert samples['dbp_series_recorded{verdict="identity_mismatch"}'] == "1"
    assert samples['dbp_jobs{state="done"}'] == "4" and samples['dbp_jobs{state="queued"}'] == "0"
    assert samples["dbp_spool_series_pending"] == "0" and samples["dbp_writeback_pending"] == "0"
    assert int(samples["dbp_flags_open"]) <= 2  # the browser test may have acknowledged one already
    assert "h:" not in response.text and "DEMO-" not in response.text  # counts only
    # Counts only, by construction: every sample is a known metric name, at most one label from a fixed vocabulary
    # (job states, verdict names), and an integer. A hash, a UID or a name would have nowhere to go.
    words = {"queued", "running", "done", "failed", "new_patient", "consistent", "possible_duplicate",
             "identity_mismatch", "needs_review", "rejected"}
    for line in response.text.splitlines():
        if line and not line.startswith("#"):
            match = re.fullmatch(r'(dbp_[a-z_]+)(?:\{(state|verdict)="([a-z_]+)"\})? (\d+)', line)
            assert match and (match.group(3) is None or match.group(3) in words), line


def test_every_page_but_login_and_metrics_needs_a_login(archive_with_flags) -> None:
    """Each route the app has (read from its URL map, so a page added later is covered too) refuses a visitor
    without a session: a redirect to the login page, or 400 for a form without its CSRF token; nothing of a flag in
    the answer. The routes are tried with a real flag's name, so an unguarded page would show a real flag."""
    archive_config, model = archive_with_flags
    config = dashboard_config(archive_config, model)
    app = create_app(config)
    server, base = serve(config)
    try:
        http = requests.Session()
        token = re.search(r'name="csrf_token" value="([^"]+)"', http.get(base + "/login").text).group(1)
        page = http.post(base + "/login", data={"username": "alice", "password": PASSWORD, "csrf_token": token}).text
        flag = re.search(r'href="/flags/(F\d+)"', page).group(1)
        assert http.get(f"{base}/flags/{flag}").status_code == 200  # the flag is there for someone logged in
        open_routes = {"login", "metrics", "static"}
        checked = []
        for rule in app.url_map.iter_rules():
            if rule.endpoint in open_routes:
                continue
            path = re.sub(r"<(?:\w+:)?flag>", flag, rule.rule)
            for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
                answer = requests.request(method, base + path, allow_redirects=False, data={"state": "false_alarm"})
                refused = (answer.status_code == 302 and answer.headers["Location"].endswith("/login")) \
                    or answer.status_code == 400
                assert refused, (method, path, answer.status_code)
                assert "h:" not in answer.text and flag not in answer.text.replace(path, "")
                checked.append(f"{method} {rule.rule}")
        assert len(checked) >= 3, checked  # the list of flags, one flag, its review
    finally:
        server.shutdown()


def test_metrics_open_one_ledger_per_app_and_still_follow_the_jobs(tmp_path: Path, monkeypatch) -> None:
    """Scrapes share one ledger (one engine and one schema check per app, not one per scrape), opened at the first
    scrape, and its counts still follow the jobs between scrapes. On a fresh SQLite archive, no demo needed."""
    from deepbrainprint.dashboard import metrics
    from worker.ledger import Ledger

    opened: list[Ledger] = []

    class CountingLedger(Ledger):  # a real ledger that remembers each construction
        def __init__(self, url: str) -> None:
            super().__init__(url)
            opened.append(self)

    monkeypatch.setattr(metrics, "Ledger", CountingLedger)
    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    config = DashboardConfig(store_url=url, users={}, secret_key=b"test-key-" + b"x" * 32, ledger_url=url)
    client = create_app(config).test_client()

    def jobs() -> dict[str, str]:
        text = client.get("/metrics").get_data(as_text=True)
        return {line.split('"')[1]: line.rsplit(" ", 1)[1] for line in text.splitlines() if line.startswith("dbp_jobs{")}

    assert opened == []  # nothing opened before the first scrape
    assert jobs()["queued"] == "0"
    writer = Ledger(url)
    try:
        writer.enqueue("s1:a", "s1", {"series_key": "s1"}, {"via": "test"})
        assert jobs()["queued"] == "1"
        writer.finish("s1:a", {"verdict": "new_patient"}, "none")
        assert jobs() == {"queued": "0", "running": "0", "done": "1", "failed": "0"}
    finally:
        writer.close()
    assert len(opened) == 1  # three scrapes, one ledger
    other = create_app(config).test_client()  # a second app has its own
    assert other.get("/metrics").status_code == 200 and len(opened) == 2
    # The plain function still takes a URL (opened and closed for that one call) or a ledger the caller keeps.
    store = metrics.Store(url)
    try:
        assert 'dbp_jobs{state="done"} 1' in metrics.metrics_text(store, url)
        assert 'dbp_jobs{state="done"} 1' in metrics.metrics_text(store, opened[0])
    finally:
        store.close()
        for ledger in opened:
            ledger.close()
