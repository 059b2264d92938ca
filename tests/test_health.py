"""Health watched after the swap (#21): a release that passes its gate and then turns unhealthy within
probation goes back, as a crash within probation does."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from .conftest import DEMO_APP, Repos, eventually, last_is, supervised, write_config

# Healthy for its first second (so it passes its gate), then /health answers 500.
TURNS_SICK = DEMO_APP.replace("HERE = Path(", "import time\nSTARTED = time.monotonic()\nHERE = Path(", 1).replace(
    "        self.send_response(200)\n",
    "        sick = self.path == '/health' and time.monotonic() - STARTED > 1\n"
    "        body = b'database is gone\\n' if sick else body\n"
    "        self.send_response(500 if sick else 200)\n", 1)


async def test_a_release_that_turns_unhealthy_within_probation_goes_back(
        tmp_path: Path, repos: Repos, session: aiohttp.ClientSession) -> None:
    """Before: a release answering 500 on its health check after going live stayed live until a person
    noticed; a process exit was the only thing probation watched."""
    assert TURNS_SICK.count("STARTED") == 2 and "sick" in TURNS_SICK
    cfg = write_config(tmp_path / "c.toml", repos,
                       deploy="probation = 30\nprobation_failures = 3\nprobation_interval = 0.2")
    async with supervised(cfg, session) as (sup, c):
        good = repos.head()
        bad = repos.commit({"app.py": TURNS_SICK}, "healthy at first, then not")
        await c.push(repos, bad)
        st = await eventually(lambda: last_is(c, bad, "failed"), 30, "the unhealthy release to go back")
        assert st["deployed_commit"] == good and bad in st["bad_commits"], st
        reason = st["last_deploy"]["reason"]
        assert "health check failed 3 times in a row within probation" in reason, reason
        assert "answered 500: database is gone" in reason and st["last_deploy"]["kind"] == "rollback", reason
        assert "commit " + good in await c.app_get()
