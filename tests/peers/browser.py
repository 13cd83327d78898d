"""Headless Chromium driven by Selenium (Debian's chromium and chromium-driver), for the
dashboard's real-browser test. `chromium()` fails (never skips) when they are missing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
INSTALL_HINT = "apt-get install -y chromium chromium-driver"


def chromium(download_dir: Path, width: int = 1280, height: int = 900) -> webdriver.Chrome:
    if not CHROMIUM.exists() or shutil.which(str(CHROMEDRIVER)) is None:
        pytest.fail(f"{CHROMIUM} or {CHROMEDRIVER} is missing: {INSTALL_HINT}")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--window-size={width},{height}",
        f"--user-data-dir={download_dir / 'profile'}",
    ):
        options.add_argument(arg)  # fmt: skip
    return webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
