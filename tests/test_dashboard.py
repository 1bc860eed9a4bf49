"""The dashboard in a real headless browser (Debian's chromium and chromedriver, driven by Selenium): log in, open a
flag, see its pictures, acknowledge it, log out, and be refused without a login. Plus what a browser does not show:
CSRF tokens required, sessions that expire, no patient identifiers in URLs.

The archive holds real people through the shipped model and the verification stage: the decubitus man (2022) under
one PatientID, the Siemens Trio man of 2010 (the same man) under another, and a different person filed under the
first PatientID, so the dashboard shows one possible_duplicate and one identity_mismatch with real pictures.
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
from fingerprint.identity.archive import Archive, ArchiveConfig
from fingerprint.model.fingerprinter import load_model
from fingerprint.types import FingerprintResult

SCREENSHOTS = Path(__file__).resolve().parent / "screenshots"
PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def archive_with_flags(shared_data, real_slice, tmp_path_factory):
    model = load_model()
    if model.model_version.startswith("untrained"):
        pytest.skip("no shipped weights")
    from dataclasses import replace

    config = ArchiveConfig.at(tmp_path_factory.mktemp("dashboard") / "archive")
    plan = [("repeats/decubitus-HFS-t1-2d", "PID-MAN", "new_patient"),
            ("t1/siemens-trio-3t-sag", "PID-OTHER-ID", "possible_duplicate"),
            ("t1/philips-elition-3t-sag-gz", "PID-MAN", "identity_mismatch")]
    with Archive(config, model=model) as archive:
        for folder, patient, expected in plan:
            sliced = real_slice(shared_data / folder)
            sliced = replace(sliced, identifiers=replace(sliced.identifiers, patient_id=patient))
            result = FingerprintResult(model.embed(sliced.pixels[None])[0], model.model_version, sliced)
            assert archive.decide_and_record(result, {})["verdict"] == expected
    return config, model


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
    from selenium.webdriver.support.ui import Select

    archive_config, model = archive_with_flags
    server, base = serve(dashboard_config(archive_config, model))
    try:
        browser.get(base + "/")
        assert browser.current_url.endswith("/login")  # refused without a login
        browser.find_element(By.ID, "username").send_keys("alice")
        browser.find_element(By.ID, "password").send_keys("wrong password")
        browser.find_element(By.ID, "login").click()
        assert "Wrong user or password" in browser.find_element(By.ID, "login-error").text
        browser.find_element(By.ID, "username").send_keys("alice")
        browser.find_element(By.ID, "password").send_keys(PASSWORD)
        browser.find_element(By.ID, "login").click()
        links = browser.find_elements(By.CLASS_NAME, "flag-link")
        assert [row.text for row in browser.find_elements(By.CSS_SELECTOR, "table.list td:nth-child(3)")] == [
            "identity_mismatch", "possible_duplicate"]
        links[0].click()
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
        assert "[resolved]" in browser.find_element(By.TAG_NAME, "h2").text
        assert "alice: moved to the right patient" in browser.page_source
        browser.find_element(By.ID, "logout").click()
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
        assert "PID-" not in logged_in.text  # patients appear as keyed hashes only
        time.sleep(3.0)
        assert http.get(base + "/", allow_redirects=False).status_code == 302  # the session has expired
    finally:
        server.shutdown()
