"""Debian's headless Chromium for the web page tests, driven by Playwright (never its downloaded browsers)."""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from dependencies import missing, require_module

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium_path() -> str:
    """The system Chromium (apt-get install chromium), or skip the test saying how to get it."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        missing("Debian's chromium is not installed (apt-get install -y chromium); the web page tests need it")
    return path


@contextmanager
def chromium(profile_dir: Path) -> Iterator:
    """A Playwright browser context on the system Chromium with a fresh profile in profile_dir
    (launched with --user-data-dir=profile_dir); closed, with the browser, on exit."""
    sync_api = require_module("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile_dir), executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS,
            locale="zh-CN", viewport={"width": 1200, "height": 900},
        )
        context.set_default_timeout(30_000)
        try:
            yield context
        finally:
            context.close()
