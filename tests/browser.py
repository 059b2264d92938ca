"""Headless Chromium driven over the DevTools protocol (a websocket, with aiohttp): open a page,
evaluate JavaScript in it. Enough to click the status page's buttons as a person would."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import aiohttp
import pytest

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium() -> str:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs Debian's chromium")
        pytest.skip("chromium not installed (apt-get install chromium)")
    return browser


class Page:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.ids = itertools.count(1)

    async def evaluate(self, expression: str, timeout: float = 30.0) -> Any:
        """The value of ``expression`` in the page (promises awaited)."""
        ident = next(self.ids)
        await self.ws.send_json({"id": ident, "method": "Runtime.evaluate", "params": {
            "expression": expression, "awaitPromise": True, "returnByValue": True}})
        async with asyncio.timeout(timeout):
            async for msg in self.ws:
                data = json.loads(msg.data)
                if data.get("id") == ident:
                    result = data.get("result", {})
                    if "exceptionDetails" in result:
                        raise AssertionError(f"{expression!r} raised in the page: {result['exceptionDetails']}")
                    return result.get("result", {}).get("value")
        raise AssertionError("the page closed")


class Browser:
    """``async with Browser(tmp) as b: page = await b.open(url)``; the process is always reaped."""

    def __init__(self, profile: Path) -> None:
        self.profile = profile
        self.session: aiohttp.ClientSession | None = None
        self.proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> "Browser":
        self.proc = await asyncio.create_subprocess_exec(
            chromium(), *FLAGS, "--remote-debugging-port=0", f"--user-data-dir={self.profile}", "about:blank",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        assert self.proc.stderr is not None
        async with asyncio.timeout(60):
            while True:
                line = (await self.proc.stderr.readline()).decode()
                if not line:
                    raise AssertionError("chromium exited before it listened for DevTools")
                if m := re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", line):
                    self.port = int(m[1])
                    break
        self.session = aiohttp.ClientSession()
        return self

    async def open(self, url: str) -> Page:
        assert self.session is not None
        async with self.session.put(f"http://127.0.0.1:{self.port}/json/new?{url}") as resp:
            target = await resp.json()
        ws = await self.session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0)
        return Page(ws)

    async def __aexit__(self, *exc: object) -> None:
        if self.session is not None:
            await self.session.close()
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()
