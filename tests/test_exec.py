"""`pushcd exec` (#20, first part): a command in a release, as its processes see it; pipes, a terminal, the
exit status and signals are the command's own."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest

from .conftest import PY, RELEASE_MODE, ROOT, Repos, git, supervised, write_config

SHOW = ("import os, sys\n"
        "print(os.getcwd()); print(os.environ['SUPERVISOR_COMMIT']); print(os.environ.get('SUPERVISOR_PROCESS', '-'))\n"
        "print('PUSHCD_TEST_SECRET' in os.environ); print(sys.stdin.readline().strip().upper())\n"
        "sys.exit(3)\n")


def pushcd_exec(cfg: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-m", "supervisor", "exec", "--config", str(cfg), *args], cwd=ROOT, input=stdin,
                          capture_output=True, text=True, timeout=60)


async def test_exec_runs_in_the_live_release_with_pipes_and_the_exit_status(
        tmp_path: Path, repos: Repos, session: aiohttp.ClientSession) -> None:
    repos.commit({"show.py": SHOW, "worker.py": "import time\ntime.sleep(600)\n"}, "a script to run by hand")
    git("pull", "-q", "--ff-only", cwd=repos.work)
    cfg = write_config(tmp_path / "c.toml", repos,
                       extra=f'[processes.worker]\ncommand = ["{PY}", "worker.py"]\n[processes.worker.env]\n'
                             f'WORKER_ONLY = "1"\n')
    async with supervised(cfg, session) as (sup, c):
        live = sup.deployer.current
        result = pushcd_exec(cfg, "--", PY, "show.py", stdin="hello\n")
        assert result.returncode == 3, result  # the command's own exit status
        cwd, commit, process, secret, echoed = result.stdout.split()
        assert Path(cwd) == live.root and commit == repos.head() and process == "-", result.stdout
        assert secret == "False" and echoed == "HELLO"  # pushcd's own secrets are not passed; stdin is
        worker = pushcd_exec(cfg, "--process", "worker", "--", PY, "-c",
                             "import os; print(os.environ['SUPERVISOR_PROCESS'], os.environ['WORKER_ONLY'])")
        assert worker.returncode == 0 and worker.stdout.split() == ["worker", "1"], worker
        missing = pushcd_exec(cfg, "--", "no-such-command-here")
        assert missing.returncode == 127 and "no-such-command-here" in missing.stderr, missing
    # pushcd is not running: the ledger still names the release that last went live
    result = pushcd_exec(cfg, "--", PY, "show.py", stdin="again\n")
    assert result.returncode == 3 and result.stdout.split()[1] == repos.head(), result


@pytest.mark.skipif(RELEASE_MODE == "in-place", reason="the same code path; the release folder is what differs")
async def test_exec_gives_the_command_the_terminal_and_its_signals(
        tmp_path: Path, repos: Repos, session: aiohttp.ClientSession) -> None:
    interactive = ("import signal, sys, time\n"
                   "print(sys.stdin.isatty(), sys.stdout.isatty(), flush=True)\n"
                   "signal.signal(signal.SIGINT, lambda *_: (print('interrupted', flush=True), sys.exit(130)))\n"
                   "time.sleep(60)\n")
    repos.commit({"shell.py": interactive}, "something interactive")
    git("pull", "-q", "--ff-only", cwd=repos.work)
    cfg = write_config(tmp_path / "c.toml", repos)
    async with supervised(cfg, session):
        pid, fd = pty.fork()
        if pid == 0:  # the child: pushcd exec on a terminal, as a person types it
            os.chdir(ROOT)
            os.execv(PY, [PY, "-m", "supervisor", "exec", "--config", str(cfg), "--", PY, "shell.py"])
        out = b""
        deadline = time.monotonic() + 30
        try:
            while b"True True" not in out and time.monotonic() < deadline:
                if select.select([fd], [], [], 0.5)[0]:
                    out += os.read(fd, 1024)
            assert b"True True" in out, out  # the command has the terminal
            os.kill(pid, signal.SIGINT)  # Ctrl-C reaches the command: pushcd became it
            while b"interrupted" not in out and time.monotonic() < deadline:
                if select.select([fd], [], [], 0.5)[0]:
                    try:
                        out += os.read(fd, 1024)
                    except OSError:
                        break
            assert b"interrupted" in out, out
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 130
        finally:
            os.close(fd)
