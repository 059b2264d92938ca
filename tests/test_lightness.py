"""What a command loads: client commands import neither aiohttp nor pygit2, and a config without
jobs imports no time-zone or cron library (bench/RESULTS.md has what each costs)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from .conftest import PY, ROOT, Repos, write_config

JOB = """
[jobs.tick]
schedule = "*/5 * * * *"
command = ["true"]
"""


def imported(cfg: Path, *command: str) -> set[str]:
    """The modules a fresh ``python -m supervisor COMMAND --config cfg`` imported (``-X importtime``)."""
    done = subprocess.run([PY, "-X", "importtime", "-m", "supervisor", *command, "--config", str(cfg)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    return {line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}


def test_a_client_command_imports_neither_aiohttp_nor_pygit2(tmp_path: Path, repos: Repos) -> None:
    cfg = write_config(tmp_path / "c.toml", repos)
    modules = imported(cfg, "status")  # pushcd is not running: it says so, having loaded the config
    assert "supervisor.config" in modules
    assert not {"aiohttp", "pygit2", "asyncio"} & modules


def test_zoneinfo_and_cronsim_load_with_the_first_job_only(tmp_path: Path, repos: Repos) -> None:
    plain = write_config(tmp_path / "plain.toml", repos)
    with_job = write_config(tmp_path / "job.toml", repos, extra=JOB)
    assert not {"zoneinfo", "cronsim"} & imported(plain, "check")
    assert {"zoneinfo", "cronsim"} <= imported(with_job, "check")
