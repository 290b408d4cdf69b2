"""An unexpected error answers 500 ``internal_error`` and is logged by its type and frames
only: its message may carry request data or a secret."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import httpx
import pytest

from cmek.clock import ManualClock
from cmek.platform.api import create_app
from cmek.platform.config import load_settings
from cmek.platform.service import Platform

PLANTED = "planted-secret-4f1c9a"


def test_an_unexpected_error_is_answered_and_logged_without_its_message(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = load_settings(None, env={"CMEK_DATA_DIR": str(tmp_path),
                                        "CMEK_KMS_ENDPOINT_URL": "http://127.0.0.1:9"})
    platform = Platform(settings, ManualClock(1_800_000_000.0))
    app = create_app(platform)

    @app.get("/boom")
    def boom() -> None:
        raise ValueError(f"password={PLANTED}")

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get("/boom")

    try:
        with caplog.at_level(logging.DEBUG):
            r = asyncio.run(call())
    finally:
        platform.close()
    assert r.status_code == 500
    assert r.json() == {"error": "internal_error",
                        "message": "the request failed; the error was logged"}
    assert r.headers["cache-control"] == "no-store"
    assert "unexpected ValueError in a request" in caplog.text
    assert "test_api_errors.py" in caplog.text  # where it failed, for whoever fixes it
    assert PLANTED not in caplog.text
    assert PLANTED not in r.text
