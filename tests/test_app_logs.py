"""App logs that outlive a restart (#21, third part): each process type's output on disk, rotated with a cap, read
back by `pushcd logs` across restarts and rotations, whether pushcd runs or not."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp

from supervisor.ops.applog import AppLog, read

from .conftest import PY, Repos, cli, eventually, git, supervised, write_config

CHATTY_WORKER = ("import os, time\nprint('worker of', os.environ['SUPERVISOR_COMMIT'][:12], flush=True)\n"
                 "time.sleep(600)\n")


def test_rotation_keeps_every_cap(tmp_path: Path) -> None:
    where = tmp_path / "logs"
    log = AppLog(where, max_bytes=2_000, keep=3, max_total=5_000)
    log.line("../etc/passwd", 1, "r1", "a process name is never a path")
    for n in range(3_000):
        log.line("web" if n % 2 else "worker", 1, "r1", f"line {n} " + "x" * 40)
    log.close()
    files = {p.name: p.stat().st_size for p in where.iterdir()}
    assert all(size < 2_000 + 200 for size in files.values()), files  # one line past max_bytes at most
    rotated = {n: s for n, s in files.items() if ".log." in n}
    assert sum(rotated.values()) <= 5_000 and len([n for n in rotated if n.startswith("web.")]) <= 3, files
    assert "other.log" in files and not (tmp_path / "etc").exists()
    newest = read(where, process="web", limit=5)
    assert [r["line"].split()[1] for r in newest] == ["2991", "2993", "2995", "2997", "2999"]
    both = read(where, limit=4)
    assert len(both) == 4 and {r["process"] for r in both} == {"web", "worker"}  # merged, oldest first
    assert [r["time"] for r in both] == sorted(r["time"] for r in both)
    assert read(where, process="web", release="r2") == []


async def test_logs_outlive_a_restart_and_are_read_with_pushcd_down(
        tmp_path: Path, repos: Repos, session: aiohttp.ClientSession) -> None:
    repos.commit({"worker.py": CHATTY_WORKER}, "a worker that talks")
    git("pull", "-q", "--ff-only", cwd=repos.work)
    cfg = write_config(tmp_path / "c.toml", repos, extra=f'[processes.worker]\ncommand = ["{PY}", "worker.py"]\n')
    async with supervised(cfg, session) as (sup, c):
        first = sup.web.live.child.pid
        first_release = sup.deployer.current.id or sup.deployer.current.commit[:12]
        await eventually(lambda: (tmp_path / "state" / "logs" / "worker.log").exists(), 10, "the worker's file")
    async with supervised(cfg, session) as (sup, c):
        second = sup.web.live.child.pid
        v2 = await c.ship(repos, {"message.txt": "v2\n"}, "v2")

        async def both_runs() -> set[int] | None:
            code, out, err = await cli(cfg, "logs", "--process", "web", "--json", "-n", "100")
            assert code == 0, err
            pids = {json.loads(line)["pid"] for line in out.splitlines()}
            return pids if {first, second} <= pids else None

        await eventually(both_runs, 20, "the web lines of both runs")
        code, out, _ = await cli(cfg, "logs", "--process", "worker")
        assert f"worker of {repos.head()[:12]}" in out and "worker[" in out, out
        code, out, _ = await cli(cfg, "logs", "--release", first_release, "--json", "-n", "500")
        assert out and all(json.loads(line)["release"] == first_release for line in out.splitlines()), out
        code, out, err = await cli(cfg, "logs", "--since", "soon")
        assert code == 1 and "give a duration" in err
        page_pids = {r["pid"] for r in await sup.console.output(process="web")}
        assert first in page_pids  # the page's pane reads the same files
    # pushcd is down: the files are read directly
    code, out, err = await cli(cfg, "logs", "--since", "1h", "--process", "web")
    assert code == 0 and f"serving commit {v2[:12]}" in out and f"web[{first}]" in out, (out, err)
