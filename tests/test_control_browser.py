"""The dashboard in a real browser (headless Chromium): log in, watch the overview change
live when a simulated station goes dark, open its page and see its snapshot. Screenshots
are saved in the test's folder (overview.png, station.png)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from selenium.webdriver.common.by import By
from selenium.webdriver.support.wait import WebDriverWait

from control.web.app import WebServer
from control.web.auth import add_user
from tests.peers.control import ControlFactory, SimulatorFactory, write_roster
from tests.peers.mosquitto import Mosquitto

WAIT_S = 20


def test_staff_member_sees_a_station_go_dark_live_and_its_picture(
    mosquitto: Mosquitto,
    control_factory: ControlFactory,
    simulator_factory: SimulatorFactory,
    browser: Any,
    tmp_path: Path,
) -> None:
    rows = [(f"SIM-000{i}", f"School {i}", "North" if i % 2 else "South") for i in range(1, 6)]
    roster = write_roster(tmp_path / "roster.csv", rows + [("AZ-0404", "Not installed", "East")])
    add_user(tmp_path / "control" / "users", "maria", "operator", "correct horse battery")
    svc = control_factory(mosquitto, roster={"path": str(roster)})
    server = WebServer(svc).start()
    sim = simulator_factory(mosquitto, 5)
    try:
        wait = WebDriverWait(browser, WAIT_S)
        browser.get(server.url + "/")
        assert "/login" in browser.current_url  # not logged in: sent to the log-in page
        browser.find_element(By.NAME, "user").send_keys("maria")
        browser.find_element(By.NAME, "password").send_keys("correct horse battery")
        browser.find_element(By.CSS_SELECTOR, "form.login button").click()
        wait.until(lambda b: b.find_elements(By.ID, "rows"))

        def count(state: str) -> str:
            return str(browser.find_element(By.CSS_SELECTOR, f".count.{state} b").text)

        wait.until(lambda b: count("ok") == "5")  # the fleet came online: updated live
        assert count("never_seen") == "1"
        browser.execute_script("window.notReloaded = true;")

        sim.set_fault("SIM-0003", "dark")

        def dark_row(b: Any) -> bool:
            cells = b.find_elements(By.CSS_SELECTOR, 'tr[data-station="SIM-0003"] .tag')
            return any("picture dark" in c.text for c in cells)

        wait.until(dark_row)
        assert browser.execute_script("return window.notReloaded === true;")
        assert count("problem") == "1"
        order = [
            r.get_attribute("data-station")
            for r in browser.find_elements(By.CSS_SELECTOR, "#rows tr")
        ]
        assert order[:2] == ["SIM-0003", "AZ-0404"]  # problems, never seen, then the fine ones
        browser.save_screenshot(str(tmp_path / "overview.png"))

        browser.find_element(By.LINK_TEXT, "SIM-0003").click()
        wait.until(
            lambda b: b.execute_script(
                "const i = document.getElementById('snapshot');"
                "return i.complete && i.naturalWidth === 320;"
            )
        )
        assert "picture dark" in browser.find_element(By.ID, "station-live").text
        browser.save_screenshot(str(tmp_path / "station.png"))
        audit = svc.store.audit(station_id="SIM-0003")
        assert [(a.command, a.user, a.ok) for a in audit] == [("snapshot", "maria", True)]
    finally:
        server.stop()
