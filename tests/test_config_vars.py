"""Config vars (#20, second part): set, unset and import them from the CLI, the API and the page; each change is a
release through the same gates, recorded by digest; a rollback brings back the values its release ran with."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path

import aiohttp
import pytest

from supervisor.configvars import ConfigVarsError, parse_dotenv

from .conftest import DEMO_APP, PY, ROOT, Repos, cli, eventually, git, supervised, write_config

# The demo app, saying its GREETING; it will not start with BROKEN set, and dies a second after it serves
# with CRASH_LATER set (a value that passes the gate, then fails in probation).
CONFIGURED_APP = DEMO_APP.replace(
    'MESSAGE = (HERE / "message.txt").read_text().strip() if (HERE / "message.txt").exists() else "hello"',
    'MESSAGE = os.environ.get("GREETING", "no greeting")\n'
    'if os.environ.get("BROKEN"):\n    sys.exit("BROKEN is set")\n'
    'if os.environ.get("CRASH_LATER"):\n    threading.Timer(1.0, os._exit, (4,)).start()\n')

TRICKY_ENV = '''# piku #294: what naive KEY=VALUE splitting gets wrong
export DATABASE_URL="postgres://u:p@h/db?sslmode=require"
QUOTED='single # not a comment'
SPACED = spaced out   # a comment after the value
EQUALS=a=b=c
MULTI="line one
line two"
EMPTY=
'''


def test_dotenv_files_are_parsed_as_dotenv_writes_them(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text(TRICKY_ENV)
    assert parse_dotenv(env) == {"DATABASE_URL": "postgres://u:p@h/db?sslmode=require",
                                 "QUOTED": "single # not a comment", "SPACED": "spaced out", "EQUALS": "a=b=c",
                                 "MULTI": "line one\nline two", "EMPTY": ""}
    env.write_text("NOVALUE\n")
    with pytest.raises(ConfigVarsError, match="NOVALUE has no value"):
        parse_dotenv(env)
    env.write_text("SUPERVISOR_COMMIT=x\n")
    with pytest.raises(ConfigVarsError, match="pushcd sets SUPERVISOR_"):
        parse_dotenv(env)


async def exec_in_live(cfg: Path, *argv: str) -> tuple[int, str, str]:
    """`pushcd exec --config CFG -- ARGV` (the command's own arguments come last)."""
    proc = await asyncio.create_subprocess_exec(PY, "-m", "supervisor", "exec", "--config", str(cfg), "--", *argv,
                                                cwd=ROOT, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


def _ship_configured(repos: Repos) -> str:
    sha = repos.commit({"app.py": CONFIGURED_APP}, "an app that reads its config vars")
    git("pull", "-q", "--ff-only", cwd=repos.work)
    return sha


async def test_a_config_change_is_a_gated_release_and_rollback_brings_the_old_values(
        tmp_path: Path, repos: Repos, session: aiohttp.ClientSession) -> None:
    first = _ship_configured(repos)
    cfg = write_config(tmp_path / "c.toml", repos)
    state = tmp_path / "state"
    async with supervised(cfg, session) as (sup, c):
        assert (await c.app_get()).startswith("no greeting")
        code, out, err = await cli(cfg, "config", "set", "GREETING=hello from config", "DB_PASSWORD=hunter2")
        assert code == 0 and "ok: config vars" in out, (out, err)
        assert (await c.app_get()).startswith("hello from config")
        assert stat.S_IMODE((state / "config-vars.json").stat().st_mode) == 0o600
        st = await c.status()
        digest = st["release"]["config"]
        assert digest and st["last_deploy"]["kind"] == "config"

        # A value that fails the gate: refused, the old values keep serving and stay current.
        code, out, err = await cli(cfg, "config", "set", "BROKEN=1")
        assert code == 1 and "did not come up" in out and "BROKEN is set" in out, (out, err)
        assert (await c.app_get()).startswith("hello from config")
        _, listed = await c.control("GET", "/config")
        assert listed["config"] == digest and "BROKEN" not in listed["vars"], listed
        assert listed["vars"]["DB_PASSWORD"] == "*** (7 characters)"  # masked unless asked

        # A value that passes the gate and dies in probation: back to the old values; the commit is not bad.
        code, out, err = await cli(cfg, "config", "set", "CRASH_LATER=1")
        assert code == 0, (out, err)
        await eventually(lambda: sup.deployer.current.config == digest and sup.web.live.alive, 30,
                         "the config vars that died in probation sent back")
        st = await c.status()
        assert not st["bad_commits"] and st["release"]["config"] == digest
        _, listed = await c.control("GET", "/config")
        assert listed["config"] == digest and "CRASH_LATER" not in listed["vars"], listed

        # The values travel with the next deploy; unset is a release too; rollback brings them back.
        second = await c.ship(repos, {"note.txt": "a new commit"}, "a commit after the config")
        assert (await c.app_get()).startswith("hello from config")
        code, out, err = await cli(cfg, "config", "unset", "GREETING")
        assert code == 0, (out, err)
        assert (await c.app_get()).startswith("no greeting")
        code, out, err = await cli(cfg, "rollback")
        assert code == 0, (out, err)
        assert (await c.app_get()).startswith("hello from config")
        assert sup.deployer.deployed == second and sup.deployer.current.config == digest
        code, out, err = await cli(cfg, "config", "--show")
        assert "GREETING=hello from config" in out and "DB_PASSWORD=hunter2" in out, out

        # Only the digest is ever written outside the store: history, status, releases, the page, the log.
        everything = json.dumps([await c.status(), (await c.control("GET", "/history"))[1],
                                 (await c.control("GET", "/releases"))[1]])
        async with session.get(f"http://127.0.0.1:{sup.control_port}/") as resp:
            everything += await resp.text()
        assert "hunter2" not in everything and digest in everything
        assert first != second


async def test_config_import_no_restart_and_while_pushcd_is_down(
        tmp_path: Path, repos: Repos, session: aiohttp.ClientSession) -> None:
    _ship_configured(repos)
    cfg = write_config(tmp_path / "c.toml", repos)
    env = tmp_path / ".env"
    env.write_text(TRICKY_ENV)
    show = [PY, "-c", "import os, json; print(json.dumps({k: os.environ.get(k) for k in "
                      "('MULTI', 'QUOTED', 'DATABASE_URL', 'GREETING')}))"]
    async with supervised(cfg, session) as (sup, c):
        code, out, err = await cli(cfg, "config", "import", str(env), "--no-restart")
        assert code == 0 and "next deploy" in out, (out, err)
        assert sup.deployer.current.config == ""  # kept for later, nothing restarted
        code, out, _ = await cli(cfg, "config")
        assert "apply at the next deploy or `pushcd restart`" in out, out
        code, out, err = await cli(cfg, "restart")
        assert code == 0, (out, err)
        assert sup.deployer.current.config != ""
        code, out, err = await exec_in_live(cfg, *show)
        assert code == 0, err
        seen = json.loads(out)
        assert seen["MULTI"] == "line one\nline two" and seen["QUOTED"] == "single # not a comment"
        assert seen["DATABASE_URL"] == "postgres://u:p@h/db?sslmode=require"
        code, out, err = await cli(cfg, "config", "set", "NOT A KEY=1")
        assert code == 2 and "a key is letters" in err, (out, err)
    # pushcd is down: the change is kept in the state dir, and the next start runs with it, through the gates.
    code, out, err = await cli(cfg, "config", "set", "GREETING=set while down")
    assert code == 0 and "not running" in out, (out, err)
    async with supervised(cfg, session) as (sup, c):
        assert (await c.app_get()).startswith("set while down")
        code, out, err = await exec_in_live(cfg, *show)
        assert json.loads(out)["GREETING"] == "set while down", (out, err)
    assert os.environ.get("GREETING") is None


async def test_config_vars_from_the_page_in_headless_chromium(
        tmp_path: Path, repos: Repos, session: aiohttp.ClientSession) -> None:
    from .browser import Browser

    _ship_configured(repos)
    cfg = write_config(tmp_path / "c.toml", repos)
    async with supervised(cfg, session) as (sup, c), Browser(tmp_path / "chrome") as browser:
        page = await browser.open(f"http://127.0.0.1:{sup.control_port}/")
        await eventually(lambda: page.evaluate("document.readyState === 'complete' && "
                                               "!!document.getElementById('config-set')"), 30, "the page")
        await page.evaluate("window.confirm = () => true; const f = document.getElementById('config-set');"
                            "f.elements.namedItem('key').value = 'GREETING';"
                            "f.elements.namedItem('value').value = 'set on the page'; f.requestSubmit()")
        await eventually(lambda: page.evaluate("document.getElementById('result').textContent.includes('ok: "
                                               "config vars')"), 30, "the page to say the change went live")
        assert (await c.app_get()).startswith("set on the page")
        await eventually(lambda: page.evaluate("!!document.querySelector('#config-vars button[data-act]')"), 30,
                         "the page to list GREETING")  # it reloads itself a few seconds after an action
        assert "set on the page" not in await page.evaluate("document.body.innerHTML")  # masked
        await page.evaluate("window.confirm = () => true; "
                            "document.querySelector('#config-vars button[data-act]').click()")
        await eventually(lambda: sup.deployer.current.config == "" and sup.web.live.alive, 30, "the unset")
        assert (await c.app_get()).startswith("no greeting")
