"""Operator controls: deploy a given commit, pause and resume, retry, restart, the failing line."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import urllib.request
from pathlib import Path

import pytest
from aiohttp import web

from .conftest import (PY, ROOT, Client, Repos, cli, deployed, eventually, gunicorn_app, running, sign, site_of,
                       spawn_supervisor, stop_process, supervised, try_status, wait_sync, write_config)

# Exits at start unless the environment has NEEDED (set in [app.env] by the "fix").
NEEDS_ENV = "import os, sys\nif not os.environ.get('NEEDED'):\n    sys.exit('NEEDED is not set')\n"


async def test_deploy_an_older_commit_pins_it_until_resume(repos: Repos, tmp_path: Path, session) -> None:
    cfg = write_config(tmp_path / "c.toml", repos)
    async with supervised(cfg, session) as (sup, c):
        v2 = await c.ship(repos, {"message.txt": "v2\n"}, "v2")
        v3 = await c.ship(repos, {"message.txt": "v3\n"}, "v3")
        code, out, err = await cli(cfg, "deploy", "--commit", v2[:10])
        assert code == 0 and "ok: back to" in out, (out, err)
        st = await deployed(c, v2)
        assert "v2" in await c.app_get() and st["paused"]["reason"] == f"pinned to {v2[:12]}"
        # A push is answered and recorded, and deploys nothing while pinned.
        v4 = repos.commit({"message.txt": "v4\n"}, "v4")
        status, body = await c.push(repos, v4)
        assert status == 200 and body["verdict"] == "paused", body
        _, body = await c.control("POST", "/deploy?wait=1")  # a person's deploy still runs: the tip
        assert body["result"]["result"] == "ok" and body["result"]["commit"] == v4
        code, out, _ = await cli(cfg, "deploy", "--commit", v3)  # forward, but not the tip: pinned again
        assert code == 0 and (await c.status())["paused"]["reason"] == f"pinned to {v3[:12]}"
        code, out, _ = await cli(cfg, "resume")
        assert code == 0
        st = await deployed(c, v4)
        assert st["paused"] is None
        # Not on the branch, or no such commit: refused with the reason; a bad value is a 400.
        code, out, _ = await cli(cfg, "deploy", "--commit", "0123456789abcdef")
        assert code == 1 and "no such commit" in out
        status, _ = await c.control("POST", "/deploy?commit=zz")
        assert status == 400
        assert [d["trigger"] for d in sup.history.deploys(10)].count("manual") >= 3


def _port(cfg: Path, section: str) -> int:
    return int(cfg.read_text().split(f'[{section}]\nlisten = "127.0.0.1:')[1].split('"')[0])


def _push_answer(cfg: Path, repos: Repos, sha: str) -> tuple[int, dict]:
    body = json.dumps({"ref": f"refs/heads/{repos.branch}", "after": sha}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{_port(cfg, 'webhook')}/github", data=body, method="POST",
                                 headers={"X-GitHub-Event": "push", "X-Hub-Signature-256": sign(body),
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status, json.load(resp)


def test_pause_survives_a_restart_of_pushcd_and_resume_deploys_the_tip(tmp_path: Path, repos: Repos) -> None:
    cfg = write_config(tmp_path / "c.toml", repos)

    def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([PY, "-m", "supervisor", *args, "--config", str(cfg)], cwd=ROOT, capture_output=True,
                              text=True, timeout=120, env=os.environ.copy())

    proc = spawn_supervisor(cfg)
    try:
        wait_sync(lambda: (s := try_status(cfg)) and s["child_pid"], 30, "pushcd")
        assert "paused: maintenance window" in run_cli("pause", "--reason", "maintenance window").stdout
    finally:
        stop_process(proc)
    proc = spawn_supervisor(cfg)
    try:
        st = wait_sync(lambda: (s := try_status(cfg)) and s["child_pid"] and s, 30, "pushcd again")
        assert st["paused"]["reason"] == "maintenance window"
        head = st["deployed_commit"]
        v2 = repos.commit({"message.txt": "v2\n"}, "v2")
        status, body = _push_answer(cfg, repos, v2)
        assert status == 200 and body["verdict"] == "paused", body  # verified, answered, recorded
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{_port(cfg, 'control')}/metrics", timeout=10).read()
        assert b"supervisor_paused 1.0" in metrics
        assert try_status(cfg)["deployed_commit"] == head
        assert "paused" in run_cli("history", "--deliveries").stdout
        result = run_cli("resume")
        assert result.returncode == 0, result
        st = wait_sync(lambda: (s := try_status(cfg)) and s["deployed_commit"] == v2 and s, 30, "the tip deployed")
        assert st["paused"] is None
    finally:
        stop_process(proc)


async def test_retry_a_marked_bad_tip_after_the_fix(repos: Repos, tmp_path: Path, session) -> None:
    cfg = write_config(tmp_path / "c.toml", repos)
    async with supervised(cfg, session) as (sup, c):
        old_bad = repos.commit({"message.txt": "an old broken one\n", "app.py.needs": "x"}, "old")
        # v2's app refuses to start without NEEDED: it fails, is rolled back, and marked bad.
        app = (repos.dev / "app.py").read_text()
        bad = repos.commit({"app.py": NEEDS_ENV + app}, "needs an env var")
        await c.push(repos, bad)
        await eventually(lambda: bad in sup.deployer.marks, 30, "the commit to be marked bad")
        sup.deployer.marks.mark(old_bad, "an older mark")  # forgotten once a newer commit deploys well
        code, out, _ = await cli(cfg, "deploy")
        assert code == 0 and "is marked bad" in out and "--retry" in out, out
        # The fix: the variable, in the config; SIGHUP.
        cfg.write_text(cfg.read_text().replace("[app.env]\n", '[app.env]\nNEEDED = "1"\n'))
        sup.reload()
        code, out, err = await cli(cfg, "deploy", "--retry")
        assert code == 0 and "ok:" in out, (out, err)
        st = await deployed(c, bad)
        assert st["bad_commits"] == {}, st["bad_commits"]


async def test_restart_applies_a_reloaded_command_and_env(repos: Repos, tmp_path: Path, session) -> None:
    cfg = write_config(tmp_path / "c.toml", repos)
    async with supervised(cfg, session) as (sup, c):
        first = sup.web.live.child.pid
        # A new command (the interpreter in UTF-8 mode) and a new variable, reloaded with SIGHUP.
        cfg.write_text(cfg.read_text().replace(f'command = ["{PY}", "app.py"', f'command = ["{PY}", "-X", "utf8", "app.py"')
                       .replace("[app.env]\n", '[app.env]\nFEATURE = "on"\n'))
        sup.reload()
        st = await c.status()
        assert st["last_reload"]["waiting_for_restart"] == ["[app] command", "[app.env]"], st["last_reload"]
        code, out, _ = await cli(cfg, "status")
        assert "apply at `pushcd restart`" in out
        code, out, _ = await cli(cfg, "restart")
        assert code == 0 and "ok: restarted by hand" in out, out
        pid = sup.web.live.child.pid
        assert pid != first and Path(f"/proc/{pid}/environ").read_bytes().split(b"\0").count(b"FEATURE=on") == 1
        assert b"-X\0utf8\0app.py" in Path(f"/proc/{pid}/cmdline").read_bytes()
        assert (await c.status())["last_reload"]["waiting_for_restart"] == []


async def test_a_failed_gunicorn_boot_leads_with_the_syntax_error(repos: Repos, tmp_path: Path, session) -> None:
    command = gunicorn_app(repos)
    cfg = write_config(tmp_path / "c.toml", repos, app={"command": command})
    async with supervised(cfg, session) as (sup, c):
        bad = repos.commit({"wsgi.py": "def app(environ, start_response:\n    pass\n"}, "a syntax error")
        await c.push(repos, bad)
        last = await eventually(lambda: sup.deployer.last if sup.deployer.last and sup.deployer.last.commit == bad
                                else None, 60, "the failed deploy")
        assert last.result == "failed"
        lead = last.reason.split(": ", 1)[1]
        assert lead.startswith("SyntaxError: "), last.reason
        st = await c.status()
        assert st["last_deploy"]["reason"].split(": ", 1)[1].startswith("SyntaxError: ")
        assert sup.history.deploys(1)[0]["reason"].split(": ", 1)[1].startswith("SyntaxError: ")


# -- notifications ---------------------------------------------------------------------------------------------


class Receivers:
    """A JSON receiver that answers 500 once (then 200), a Slack-style one, and GitHub's statuses API."""

    def __init__(self) -> None:
        self.got: dict[str, list[tuple[dict[str, str], bytes]]] = {"json": [], "slack": [], "github": []}
        self.failed_once = False

    def app(self) -> web.Application:
        async def hook(request: web.Request) -> web.Response:
            body = await request.read()
            if not self.failed_once:
                self.failed_once = True
                return web.Response(status=500, text="try again")
            self.got["json"].append((dict(request.headers), body))
            return web.Response(text="ok")

        async def slack(request: web.Request) -> web.Response:
            self.got["slack"].append((dict(request.headers), await request.read()))
            return web.Response(text="ok")

        async def statuses(request: web.Request) -> web.Response:
            if request.headers.get("Authorization") != "Bearer gh-token":
                return web.Response(status=401)
            self.got["github"].append(({"sha": request.match_info["sha"]}, await request.read()))
            return web.json_response({"state": "ok"}, status=201)

        app = web.Application()
        app.router.add_post("/hook", hook)
        app.router.add_post("/slack", slack)
        app.router.add_post("/api/repos/test/app/statuses/{sha}", statuses)
        return app


async def test_notifications_json_signed_and_retried_slack_and_github_statuses(repos: Repos, tmp_path: Path, session,
                                                                               monkeypatch) -> None:
    monkeypatch.setenv("PUSHCD_NOTIFY_SECRET", "notify-secret")
    monkeypatch.setenv("PUSHCD_GH_TOKEN", "gh-token")
    receivers = Receivers()
    runner = web.AppRunner(receivers.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    notify = f"""
[[notify]]
url = "{base}/hook"
secret_env = "PUSHCD_NOTIFY_SECRET"

[[notify]]
kind = "slack"
url = "{base}/slack"

[[notify]]
kind = "github"
token_env = "PUSHCD_GH_TOKEN"
api_url = "{base}/api"
events = ["deploy_ok", "deploy_failed", "rolled_back"]
"""
    cfg = write_config(tmp_path / "c.toml", repos, repo_extra='full_name = "test/app"', extra=notify)
    cfg.write_text(cfg.read_text().replace("[control]\n", '[control]\npublic_url = "https://ops.example/pushcd/"\n'))
    try:
        async with supervised(cfg, session) as (sup, c):
            v2 = await c.ship(repos, {"message.txt": "v2\n"}, "v2")
            bad = repos.commit({"app.py": "import no_such_module_here\n"}, "imports what is not there")
            await c.push(repos, bad)
            await eventually(lambda: receivers.got["json"] and receivers.got["slack"]
                             and len(receivers.got["github"]) >= 2, 30, "the notifications (one retried)")
    finally:
        await runner.cleanup()
    headers, raw = receivers.got["json"][0]
    body = json.loads(raw)
    assert receivers.failed_once  # the first attempt got a 500 and was retried
    expected = "sha256=" + hmac.new(b"notify-secret", raw, hashlib.sha256).hexdigest()
    assert headers["X-Pushcd-Signature-256"] == expected
    assert body["event"] == "deploy_failed" and body["commit"] == bad and body["message"] == "imports what is not there"
    assert body["failing_line"].startswith("ModuleNotFoundError: No module named 'no_such_module_here'"), body
    assert body["link"] == "https://ops.example/pushcd/" and body["duration"] > 0
    slack = json.loads(receivers.got["slack"][0][1])["text"]
    assert "deploy_failed" in slack and "ModuleNotFoundError" in slack
    states = {json.loads(b)["state"]: h["sha"] for h, b in receivers.got["github"]}
    assert states == {"success": v2, "failure": bad}, states
    text = sup.metrics.render().decode()
    assert 'supervisor_notifications_total{kind="json",result="sent"} 1.0' in text
    assert 'supervisor_notifications_total{kind="github",result="sent"} 2.0' in text


# -- the page as a console ------------------------------------------------------------------------------------


async def test_the_page_buttons_in_headless_chromium(repos: Repos, tmp_path: Path, session) -> None:
    from .browser import Browser

    cfg = write_config(tmp_path / "c.toml", repos)
    async with running(cfg) as sup, Browser(tmp_path / "chrome") as browser:
        c = Client(sup, session)
        v2 = await c.ship(repos, {"message.txt": "v2\n"}, "v2")
        v3 = await c.ship(repos, {"message.txt": "v3\n"}, "v3")
        page = await browser.open(f"http://127.0.0.1:{sup.control_port}/")

        async def click(selector: str) -> None:
            """As a person would, once the page shows the button: confirm() says yes."""
            await eventually(lambda: page.evaluate(f"!!document.querySelector({json.dumps(selector)})"), 30,
                             f"the page to show {selector}")
            await page.evaluate(f"window.confirm = () => true; document.querySelector({json.dumps(selector)}).click()")

        async def result_says(text: str) -> None:
            await eventually(lambda: page.evaluate(f"document.getElementById('result').textContent.includes("
                                                   f"{json.dumps(text)})"), 30, f"the page to show {text!r}")

        await eventually(lambda: page.evaluate("document.readyState === 'complete' && "
                                               "!!document.getElementById('console')"), 30, "the page")
        assert await page.evaluate("document.getElementById('logs').scrollTop > 0 || "
                                   "document.getElementById('logs').scrollHeight <= "
                                   "document.getElementById('logs').clientHeight")  # opens at the newest line
        assert await page.evaluate("!!document.querySelector('#chart rect')")
        await click("#pause")
        await eventually(lambda: sup.deployer.pause.reason == "paused from the page", 30, "the pause")
        await click("#resume")
        await eventually(lambda: sup.deployer.pause.reason is None, 30, "the resume")
        first = sup.web.live.child.pid
        await click("#restart")
        await result_says("ok: restarted by hand")
        assert sup.web.live.child.pid != first
        await click(f"button[data-act*='commit={v2}']")  # "roll back to this" on the earlier release
        await deployed(c, v2)
        assert sup.deployer.pause.reason == f"pinned to {v2[:12]}"
        await click("#deploy")  # a person's deploy runs while paused: the tip
        await deployed(c, v3)
        await result_says("ok:")


async def test_a_reload_takes_a_new_secret_from_a_file(repos: Repos, tmp_path: Path, session) -> None:
    """Hardening #19.11: a SIGHUP adding a [[notify]] whose secret_env the daemon was not started with said
    "export it", which cannot reach a running daemon; the message now names secret_file, and a file works."""
    cfg = write_config(tmp_path / "c.toml", repos)
    async with supervised(cfg, session) as (sup, c):
        base = cfg.read_text()
        cfg.write_text(base + '[[notify]]\nurl = "http://127.0.0.1:9/x"\nsecret_env = "PUSHCD_EXPORTED_LATER"\n')
        sup.reload()
        assert sup.last_reload["ok"] is False and "set secret_file instead" in sup.last_reload["reason"]
        (tmp_path / "notify-secret").write_text("from a file\n")
        cfg.write_text(base + f'[[notify]]\nurl = "http://127.0.0.1:9/x"\nsecret_file = "{tmp_path}/notify-secret"\n')
        sup.reload()
        assert sup.last_reload["ok"] is True, sup.last_reload
        assert [(t.url, secret) for t, secret, _ in sup.notifier.targets] == [("http://127.0.0.1:9/x", b"from a file")]


async def test_a_person_logs_in_to_the_page_when_a_token_guards_it(
        repos: Repos, tmp_path: Path, session, monkeypatch: pytest.MonkeyPatch) -> None:
    """#20, the page with a token set: a browser got a 401 JSON body and no way in."""
    from .browser import Browser

    monkeypatch.setenv("PUSHCD_PAGE_TOKEN", "a-long-random-token")
    cfg = write_config(tmp_path / "c.toml", repos)
    cfg.write_text(cfg.read_text().replace("[control]\n", '[control]\ntoken_env = "PUSHCD_PAGE_TOKEN"\n'))
    async with running(cfg) as sup, Browser(tmp_path / "chrome") as browser:
        base = f"http://127.0.0.1:{sup.control_port}"
        page = await browser.open(base + "/")

        async def at(path: str, selector: str) -> None:
            await eventually(lambda: page.evaluate(f"location.pathname === {json.dumps(path)} && "
                                                   f"!!document.querySelector({json.dumps(selector)})"), 30,
                             f"{path} showing {selector}")

        await at("/login", "#token")  # sent to the way in, not a 401
        await page.evaluate("document.getElementById('token').value = 'not it'; "
                            "document.getElementById('login').click()")
        await at("/login", ".problem")
        await page.evaluate("document.getElementById('token').value = 'a-long-random-token'; "
                            "document.getElementById('login').click()")
        await at("/", "#pause")
        cookie = await page.evaluate("document.cookie")
        assert "pushcd_session" not in cookie  # HttpOnly: no script of the page reads it
        await page.evaluate("window.confirm = () => true; document.getElementById('pause').click()")
        await eventually(lambda: sup.deployer.pause.reason == "paused from the page", 30, "the button's pause")
        # Logged in, a page of another origin posts a form here: the session is no credential for it.
        async def attacker(_request: web.Request) -> web.Response:
            return web.Response(content_type="text/html", text=(
                f'<form id=f method=POST action="{base}/resume"></form>'
                '<script>document.getElementById("f").submit()</script>'))

        evil = web.Application()
        evil.router.add_get("/", attacker)
        async with site_of(evil) as other_site:
            other = await browser.open(f"{other_site}/")
            await eventually(lambda: other.evaluate("document.readyState === 'complete'"), 30, "the other page")
        assert sup.deployer.pause.reason == "paused from the page"  # nothing changed
        await page.evaluate("document.getElementById('logout').click()")
        await at("/login", "#token")
        status = await page.evaluate("fetch('/status').then(r => r.status)")
        assert status == 401  # logged out: no way in without the token again
