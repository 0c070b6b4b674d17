"""The dashboard in a real headless Chromium (Debian's ``chromium``), driven by Playwright, against a real
deployment (``tests/e2e``'s processes). Without Chromium the tests skip with the reason; with ``CI=true``
they fail instead."""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.conftest import IN_CI
from tests.e2e.conftest import admin, deployment  # noqa: F401 - fixtures reused by the browser tests

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def chromium_path() -> str:
    """Debian's Chromium, or skip (fail in CI) with the reason."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    reason = None
    if path is None:
        reason = "no chromium on PATH (apt-get install chromium)"
    elif importlib.util.find_spec("playwright") is None:
        reason = "the playwright package is not installed (pip install -e '.[dev]')"
    if reason is not None:
        if IN_CI:
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)
    assert path is not None
    return path


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    executable = chromium_path()
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        instance = await playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            await instance.close()
