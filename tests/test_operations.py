"""Operations: history across restarts, control API, metrics, CLI, logs, systemd, hardening."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from supervisor import config
from supervisor.config import ConfigError

from .conftest import (PY, ROOT, SECRET, Client, Repos, cli, deployed, eventually, git, payload, running,
                       spawn_supervisor, stop_process, supervised, wait_sync, write_config)

BROKEN_APP = "raise SystemExit(9)\n"


async def test_history_bad_commits_and_duplicates_survive_a_restart(repos: Repos, tmp_path: Path, session) -> None:
    cfg = write_config(tmp_path / "c.toml", repos)
    async with supervised(cfg, session) as (sup, c):
        good = repos.commit({"message.txt": "v2\n"}, "v2")
        await c.push(repos, good, delivery="delivery-1")
        await deployed(c, good)
        bad = repos.commit({"app.py": BROKEN_APP}, "broken")
        await c.push(repos, bad, delivery="delivery-2")
        await eventually(lambda: sup.deployer.last.result == "failed", what="the failed deploy")
    async with supervised(cfg, session) as (sup, c):
        st = await c.status()
        assert bad in st["bad_commits"] and st["deployed_commit"] == good
        status, body = await c.push(repos, good, delivery="delivery-1")
        assert status == 200 and body["verdict"] == "duplicate"
        async with session.get(f"http://127.0.0.1:{sup.control_port}/history") as resp:
            hist = await resp.json()
        deploys = hist["deploys"]
        assert [d["result"] for d in deploys[:2]] == ["failed", "ok"]
        assert deploys[1]["from_commit"] != good and deploys[1]["to_commit"] == good
        assert deploys[1]["trigger"] == "webhook" and deploys[1]["duration"] > 0
        assert "exited with status 9" in deploys[0]["reason"]
        assert {d["id"] for d in hist["deliveries"]} >= {"delivery-1", "delivery-2"}
        # The bad commit is still not retried after the restart.
        runs = sup.deployer.runs
        await c.push(repos, bad)
        await eventually(lambda: sup.deployer.runs > runs, what="the worker to look")
        assert sup.deployer.last is None


async def test_history_is_paged_and_bounded(repos: Repos, tmp_path: Path, session) -> None:
    cfg = write_config(tmp_path / "c.toml", repos)
    cfg.write_text(cfg.read_text().replace("[state]\n", "[state]\nretention = 3\n"))
    async with supervised(cfg, session) as (sup, c):
        for i in range(5):
            await c.ship(repos, {"message.txt": f"v{i}\n"}, f"v{i}")
        sup.history.prune()
        async with session.get(f"http://127.0.0.1:{sup.control_port}/history?limit=2") as resp:
            page = await resp.json()
        assert len(page["deploys"]) == 2 and page["next"]
        async with session.get(f"http://127.0.0.1:{sup.control_port}/history?limit=2&before="
                               f"{page['next']['before']}") as resp:
            rest = await resp.json()
        assert len(rest["deploys"]) == 1  # retention = 3
        assert rest["deploys"][0]["seq"] < page["deploys"][-1]["seq"]


async def test_rollback_through_the_api_and_the_cli(repos: Repos, tmp_path: Path, session) -> None:
    cfg = write_config(tmp_path / "c.toml", repos)
    async with supervised(cfg, session) as (sup, c):
        v2 = await c.ship(repos, {"message.txt": "v2\n"}, "v2")
        v3 = repos.commit({"message.txt": "v3\n"}, "v3")
        code, out, err = await cli(cfg, "deploy")
        assert code == 0, (out, err)
        assert "ok: fast-forward" in out and v3[:12] in out
        _, body = await c.control("POST", "/rollback?wait=1")
        assert body["done"] and body["result"]["result"] == "ok" and body["result"]["trigger"] == "rollback"
        st = await deployed(c, v2)
        assert v3 in st["bad_commits"] and repos.head() == v2
        assert "v2" in await c.app_get()
        # A webhook for the same tip does not bring v3 back...
        await c.push(repos, v3)
        # ...and the CLI rolls back once more, to the initial release.
        code, out, err = await cli(cfg, "rollback")
        assert code == 0, (out, err)
        assert "ok: roll back" in out
        code, out, _ = await cli(cfg, "history", "--json")
        triggers = [d["trigger"] for d in json.loads(out)["deploys"]]
        assert triggers[:2] == ["rollback", "rollback"] and "manual" in triggers


async def test_cli_status_history_logs_and_nothing_to_deploy(repos: Repos, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.toml", repos)
    async with running(cfg) as sup:
        code, out, _ = await cli(cfg, "status")
        assert code == 0 and "state        running" in out and repos.head()[:12] in out
        code, out, _ = await cli(cfg, "status", "--json")
        assert json.loads(out)["deployed_commit"] == repos.head()
        code, out, _ = await cli(cfg, "deploy")
        assert code == 0 and "nothing to deploy" in out
        code, out, _ = await cli(cfg, "logs")
        assert code == 0 and f"web[{sup.web.live.child.pid}] serving commit" in out
        code, out, _ = await cli(cfg, "history")
        assert code == 0 and "(no deploys yet)" in out
    code, out, err = await cli(cfg, "status")
    assert code == 1 and "no supervisor answers" in err and "Traceback" not in err


async def test_metrics(repos: Repos, tmp_path: Path, session) -> None:
    cfg = write_config(tmp_path / "c.toml", repos)
    async with supervised(cfg, session) as (sup, c):
        sha = await c.ship(repos, {"message.txt": "v2\n"}, "v2")
        await c.deliver(b"{}", "ping")
        await c.deliver(b"{}", "ping", signature="sha256=00")
        async with session.get(f"http://127.0.0.1:{sup.control_port}/metrics") as resp:
            assert resp.status == 200
            text = await resp.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    assert samples[("supervisor_deliveries_total", (("verdict", "queued"),))] == 1
    assert samples[("supervisor_deliveries_total", (("verdict", "ping"),))] == 1
    assert samples[("supervisor_deliveries_total", (("verdict", "unauthorized"),))] == 1
    assert samples[("supervisor_deploys_total", (("kind", "deploy"), ("result", "ok")))] == 1
    assert samples[("supervisor_deploy_duration_seconds_count", ())] == 1
    assert samples[("supervisor_webhook_latency_seconds_count", ())] == 3
    # where the answers' time went: every delivery passed the headers; the unsigned one stopped at its body
    assert [samples[("supervisor_webhook_phase_seconds_count", (("phase", p),))] for p in
            ("headers", "body", "judge", "queue")] == [3, 3, 2, 3]
    assert samples[("supervisor_child_up", ())] == 1
    assert samples[("supervisor_child_restarts_total", ())] == 0  # a deploy is no crash restart
    info = [k for k in samples if k[0] == "supervisor_deployed_commit_info"]
    assert info and ("commit", sha) in info[0][1] and ("message", "v2") in info[0][1]


async def test_control_token(repos: Repos, tmp_path: Path, session, monkeypatch) -> None:
    cfg = write_config(tmp_path / "c.toml", repos)
    text = cfg.read_text()
    open_cfg = tmp_path / "open.toml"
    open_cfg.write_text(text.replace('[control]\nlisten = "127.0.0.1:', '[control]\nlisten = "0.0.0.0:'))
    with pytest.raises(ConfigError, match="not loopback, so it needs a bearer token"):
        config.load(open_cfg)
    cfg.write_text(text.replace("[control]\n", '[control]\ntoken_env = "PUSHCD_TEST_TOKEN"\n'))
    monkeypatch.setenv("PUSHCD_TEST_TOKEN", "tok-123")
    async with running(cfg) as sup:
        base = f"http://127.0.0.1:{sup.control_port}"
        for method, path in [("GET", "/status"), ("GET", "/"), ("GET", "/metrics"), ("POST", "/deploy"),
                             ("POST", "/rollback"), ("GET", "/history"), ("GET", "/logs")]:
            async with session.request(method, base + path) as resp:
                assert resp.status == 401, path
            async with session.request(method, base + path, headers={"Authorization": "Bearer tok-12"}) as resp:
                assert resp.status == 401, path
        async with session.get(base + "/status", headers={"Authorization": "Bearer tok-123"}) as resp:
            assert resp.status == 200
        code, out, _ = await cli(cfg, "status", env={"PUSHCD_TEST_TOKEN": "tok-123"})
        assert code == 0 and "running" in out


async def test_secret_never_appears(repos: Repos, tmp_path: Path, session, caplog) -> None:
    caplog.set_level("DEBUG")
    cfg = write_config(tmp_path / "c.toml", repos)
    async with supervised(cfg, session) as (sup, c):
        await c.ship(repos, {"message.txt": "v2\n"}, "v2")
        await c.deliver(payload("github/push.json"), signature="sha256=" + "1" * 64)
        base = f"http://127.0.0.1:{sup.control_port}"
        texts = []
        for path in ("/", "/status", "/history", "/logs", "/metrics"):
            async with session.get(base + path) as resp:
                texts.append(await resp.text())
    texts.append(caplog.text)
    code, out, err = await cli(cfg, "check")
    texts += [out, err]
    for text in texts:
        assert SECRET not in text and SECRET.encode().hex() not in text


async def test_status_page_in_headless_chromium(repos: Repos, tmp_path: Path, session) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs Debian's chromium")
        pytest.skip("chromium not installed (apt-get install chromium)")
    cfg = write_config(tmp_path / "c.toml", repos)
    gate, hold = tmp_path / "gate", tmp_path / "hold"  # held only once started: the first start prepares too
    script = (f"import os,time\nwhile os.path.exists({str(hold)!r}) and not os.path.exists({str(gate)!r}): "
              f"time.sleep(0.01)\n")
    cfg.write_text(cfg.read_text().replace("[deploy]", f"[deploy]\nbefore_restart = [[{json.dumps(PY)}, "
                                                       f"\"-c\", {json.dumps(script)}]]"))

    async def dump(url: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp_path / 'chrome'}", "--dump-dom", url,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        out, _ = await asyncio.wait_for(proc.communicate(), 90)
        return out.decode()

    async with supervised(cfg, session) as (sup, c):
        hold.write_text("")
        v2 = repos.commit({"message.txt": "v2\n"}, "Second <b>release</b>")
        await c.push(repos, v2)
        gate.write_text("go")
        await deployed(c, v2)
        gate.unlink()
        v3 = repos.commit({"message.txt": "v3\n"}, "third")
        await c.push(repos, v3)
        await eventually(lambda: sup.deployer.state == "deploying", what="the deploy to start")
        page = await dump(f"http://127.0.0.1:{sup.control_port}/")  # during the deploy
        gate.write_text("go")
        await deployed(c, v3)
        after = await dump(f"http://127.0.0.1:{sup.control_port}/")
    assert 'id="state">deploying<' in page
    assert v2 in page and "Second &lt;b&gt;release&lt;/b&gt;" in page  # escaped, not markup
    assert 'id="state">running<' in after and v3 in after
    assert after.count("<span class=\"state ok\">ok</span>") >= 2
    assert "queued" in after and "webhook" in after
    assert "serving commit" in after  # the child's log lines
    assert 'name="viewport"' in after and "location.reload()" in after


def test_json_logs_and_systemd_notify(tmp_path: Path, repos: Repos) -> None:
    cfg = write_config(tmp_path / "c.toml", repos, watch="enabled = false")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(30)
    env_cfg = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([PY, "-m", "supervisor", "run", "--config", str(cfg), "--log-format", "json"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env_cfg)
    try:
        assert notify.recv(100) == b"READY=1"
        port = int(cfg.read_text().split('[webhook]\nlisten = "127.0.0.1:')[1].split('"')[0])
        body = b"{}"
        import urllib.request

        from .conftest import sign
        req = urllib.request.Request(f"http://127.0.0.1:{port}/github", data=body, method="POST", headers={
            "X-GitHub-Event": "ping", "X-GitHub-Delivery": "json-1", "X-Hub-Signature-256": sign(body),
            "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 200
        proc.send_signal(signal.SIGTERM)
        assert notify.recv(100) == b"STOPPING=1"
    finally:
        out = stop_process(proc)
        notify.close()
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert proc.returncode == 0
    hit = [line for line in lines if line.get("delivery") == "json-1"]
    assert hit and hit[0]["verdict"] == "ping" and "duration" in hit[0] and hit[0]["level"] == "info"


def test_sighup_applies_a_good_config_and_refuses_a_bad_one(tmp_path: Path, repos: Repos) -> None:
    cfg = write_config(tmp_path / "c.toml", repos, watch="enabled = false")
    proc = spawn_supervisor(cfg)
    import urllib.request

    ctl = int(cfg.read_text().split('[control]\nlisten = "127.0.0.1:')[1].split('"')[0])
    hook = int(cfg.read_text().split('[webhook]\nlisten = "127.0.0.1:')[1].split('"')[0])

    def status() -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{ctl}/status", timeout=5) as resp:
            return json.load(resp)

    def push_verdict() -> str:
        from .conftest import sign
        body = json.dumps({"ref": "refs/heads/main", "after": "a" * 40,
                           "repository": {"full_name": "test/app"}}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{hook}/github", data=body, method="POST", headers={
            "X-GitHub-Event": "push", "X-Hub-Signature-256": sign(body), "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.load(resp)["verdict"]

    try:
        wait_sync(lambda: _try(status), 30, "the supervisor to answer")
        pid = status()["child_pid"]
        assert push_verdict() == "queued"
        cfg.write_text(cfg.read_text().replace("[repo]\n", '[repo]\nfull_name = "someone/else"\n'))
        proc.send_signal(signal.SIGHUP)
        wait_sync(lambda: (status()["last_reload"] or {}).get("ok"), 30, "the reload")
        assert push_verdict() == "ignored"
        good = cfg.read_text()
        cfg.write_text(good + "\n[watch\n")
        proc.send_signal(signal.SIGHUP)
        refused = wait_sync(lambda: (status()["last_reload"] or {}).get("ok") is False and status()["last_reload"],
                            30, "the refusal")
        assert "TOML syntax error" in refused["reason"]
        cfg.write_text(good.replace('full_name = "someone/else"\n', ""))
        # still the reloaded config (not the bad one, not this later file): ignored
        assert push_verdict() == "ignored"
        assert status()["child_pid"] == pid  # the app was never dropped
    finally:
        out = stop_process(proc)
    assert "config reloaded" in out
    assert "reload refused, keeping the running config" in out and "TOML syntax error" in out


def _try(fn):
    try:
        return fn()
    except OSError:
        return None


async def test_tls_allow_from_and_trusted_proxies(repos: Repos, tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1"], check=True, capture_output=True)
    cfg = write_config(tmp_path / "c.toml", repos, webhook_extra=(
        f'tls_cert = "{cert}"\ntls_key = "{key}"\nallow_from = ["203.0.113.0/24"]\n'
        f'trusted_proxies = ["127.0.0.1/32"]'))
    ctx = ssl.create_default_context(cafile=str(cert))
    ctx.check_hostname = False
    async with aiohttp.ClientSession() as session, running(cfg) as sup:
        assert sup.webhook_url.startswith("https://")
        c = Client(sup, session)
        body = b"{}"
        from .conftest import sign
        headers = {"X-GitHub-Event": "ping", "X-Hub-Signature-256": sign(body), "Content-Type": "application/json"}
        async with session.post(sup.webhook_url, data=body, headers=headers, ssl=ctx) as resp:
            assert resp.status == 403  # 127.0.0.1 is a proxy, not an allowed sender
        async with session.post(sup.webhook_url, data=body, ssl=ctx,
                                headers={**headers, "X-Forwarded-For": "203.0.113.7"}) as resp:
            assert resp.status == 200 and (await resp.json())["verdict"] == "ping"
        async with session.post(sup.webhook_url, data=body, ssl=ctx,
                                headers={**headers, "X-Forwarded-For": "203.0.113.7, 198.51.100.1"}) as resp:
            assert resp.status == 403  # the last untrusted hop decides
        with pytest.raises(aiohttp.ClientError):
            async with session.post(sup.webhook_url.replace("https", "http"), data=body, headers=headers):
                pass
        assert (await c.status())["state"] == "running"


async def test_cli_small_things_pipes_times_deliveries(repos: Repos, tmp_path: Path, session) -> None:
    cfg = write_config(tmp_path / "c.toml", repos)
    async with supervised(cfg, session) as (sup, c):
        await c.ship(repos, {"message.txt": "v2\n"}, "v2")
        # A reader that goes away at once (`| head -2` once it has its lines): no traceback, exit 0.
        proc = await asyncio.create_subprocess_shell(
            f"set -o pipefail; {PY} -m supervisor status --config {cfg} | true && "
            f"{PY} -m supervisor history --config {cfg} | true", cwd=ROOT, executable="/bin/bash",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0 and b"Traceback" not in err and b"BrokenPipe" not in err, err
        code, out, _ = await cli(cfg, "logs")
        assert code == 0 and re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d web\[\d+\] serving commit", out, re.M), out
        code, out, _ = await cli(cfg, "history", "--deliveries")
        assert code == 0 and "queued" in out and "push to main" in out, out


async def test_a_branch_deleted_on_the_remote_is_reported_and_deploys_nothing(repos: Repos, tmp_path: Path,
                                                                              session) -> None:
    cfg = write_config(tmp_path / "c.toml", repos)
    async with supervised(cfg, session) as (sup, c):
        head = repos.head()
        git("update-ref", "-d", f"refs/heads/{repos.branch}", cwd=repos.origin)
        _, body = await c.control("POST", "/deploy?wait=1")
        result = body["result"]
        assert result["result"] == "failed" and f"origin/{repos.branch} is gone" in result["reason"], result
        st = await c.status()
        assert st["deployed_commit"] == head and "is gone" in st["last_deploy"]["reason"]
