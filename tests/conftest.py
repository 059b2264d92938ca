"""Real parts for the tests: git repositories made with the git CLI, real
children, real sockets on 127.0.0.1, real signed requests. No fixed sleeps:
:func:`eventually` waits for a condition with a deadline."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web

from .gitrepos import ROOT, Repos, git  # noqa: F401 - re-exported for the tests
from .ports import free_port, free_ports  # noqa: F401 - re-exported for the tests

# The project's shared copy when this checkout sits beside it; otherwise ours, the same files byte for
# byte (tests/payloads, with their sources and licenses), so a clone anywhere runs the suite.
_SHARED = ROOT.parent / "shared" / "webhook-payloads"
PAYLOADS = Path(os.environ.get("PUSHCD_PAYLOADS") or (_SHARED if _SHARED.is_dir() else ROOT / "tests" / "payloads"))
SECRET = "test-secret-不要"  # non-ASCII on purpose: the secret is bytes, not text
PY = sys.executable
RELEASE_MODE = os.environ.get("PUSHCD_TEST_RELEASE_MODE", "snapshot")  # the whole suite runs in either mode
DEMO_APP = (ROOT / "examples" / "app" / "app.py").read_text()  # the demo app's source, for commits that vary it


def payload(name: str) -> bytes:
    path = PAYLOADS / name
    if not path.exists():
        pytest.fail(f"missing payload {path}; set PUSHCD_PAYLOADS to a webhook-payloads folder")
    return path.read_bytes()


def sign(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


async def eventually(check: Callable[[], Any], timeout: float = 20.0, what: str = "condition",
                     interval: float = 0.02) -> Any:
    """Poll ``check`` (sync or async) until it returns something truthy, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
            if asyncio.iscoroutine(last):
                last = await last
        except Exception as exc:  # noqa: BLE001 - keep polling, report the last error
            last = exc
        if last and not isinstance(last, Exception):
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")
        await asyncio.sleep(interval)


def wait_sync(check: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def raw_request(port: int, data: bytes, timeout: float = 10.0, half_close: bool = False) -> int:
    """Send raw bytes; return the HTTP status (0 when the server just closed).

    ``half_close`` ends our side at once, so a request that promised more body than
    it sent fails fast instead of waiting out the body timeout.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        reply = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            reply += chunk
    first = reply.split(b"\r\n", 1)[0].split()
    return int(first[1]) if len(first) >= 2 and first[1].isdigit() else 0


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except FileNotFoundError:
        return False


WSGI_APP = ("import os\n"
            "def app(environ, start_response):\n"
            "    body = open('message.txt', 'rb').read() + b'commit ' + os.environ['SUPERVISOR_COMMIT'].encode()\n"
            "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
            "    return [body + b'\\n']\n")


def _add_app(repos: Repos, name: str, text: str) -> None:
    """Commit an app file to the repo and bring the deployed tree to it (before the supervisor starts)."""
    repos.commit({name: text}, name)
    git("pull", "-q", "--ff-only", cwd=repos.work)


def gunicorn_app(repos: Repos) -> list[str]:
    """A tiny WSGI app in the repo; the gunicorn command for it."""
    _add_app(repos, "wsgi.py", WSGI_APP)
    return [PY, "-m", "gunicorn", "--bind", "fd://{fd}", "--bind", "fd://{probe_fd}", "--workers", "2",
            "--graceful-timeout", "5", "wsgi:app"]


AIOHTTP_APP = ("import os, socket, sys\n"
               "from aiohttp import web\n"
               "async def hello(request):\n"
               "    body = open('message.txt').read() + 'commit ' + os.environ['SUPERVISOR_COMMIT']\n"
               "    return web.Response(text=body + '\\n')\n"
               "app = web.Application()\n"
               "app.router.add_get('/', hello)\n"
               "web.run_app(app, sock=[socket.socket(fileno=int(fd)) for fd in sys.argv[1:]], print=None)\n")


def aiohttp_app(repos: Repos) -> list[str]:
    """A tiny aiohttp app (``web.run_app`` on the sockets we pass) in the repo; the command for it."""
    _add_app(repos, "aioapp.py", AIOHTTP_APP)
    return [PY, "aioapp.py", "{fd}", "{probe_fd}"]


ASGI_APP = ("import os\n"
            "async def app(scope, receive, send):\n"
            "    if scope['type'] != 'http':\n"
            "        return\n"
            "    body = open('message.txt', 'rb').read() + b'commit ' + os.environ['SUPERVISOR_COMMIT'].encode()\n"
            "    await send({'type': 'http.response.start', 'status': 200,\n"
            "                'headers': [(b'content-type', b'text/plain')]})\n"
            "    await send({'type': 'http.response.body', 'body': body + b'\\n'})\n")


def uvicorn_app(repos: Repos) -> list[str]:
    """A tiny ASGI app in the repo; ``uvicorn --fd`` takes one socket, so no probe fd."""
    _add_app(repos, "asgi.py", ASGI_APP)
    return [PY, "-m", "uvicorn", "--fd", "{fd}", "--timeout-graceful-shutdown", "5", "asgi:app"]


@pytest.fixture
def repos(tmp_path: Path) -> Repos:
    return Repos(tmp_path)


def write_config(path: Path, repos: Repos, *, app: dict[str, Any] | None = None, extra: str = "",
                 repo_extra: str = "", webhook_extra: str = "", ready: dict[str, Any] | None = None,
                 watch: str = "debounce_ms = 50", deploy: str = "probation = 30", release: str = "") -> Path:
    """A config for the test's repos. [release] mode is snapshot (the default) unless ``release`` says otherwise
    or PUSHCD_TEST_RELEASE_MODE=in-place runs the suite in place."""
    app = app or {}
    command = app.get("command", [PY, "app.py", "--fd", "{fd}", "--fd", "{probe_fd}"])
    hook_port, app_port, control_port = free_ports(3)  # distinct: two listeners on one port are refused
    listen = app.get("listen", f"127.0.0.1:{app_port}")
    ready = {"http": "/health", "min_uptime": 0.2, "timeout": 15, **(ready or {})}
    ready_lines = "\n".join(f"{k} = {json.dumps(v)}" for k, v in ready.items() if v is not None)
    listen_line = f'listen = "{listen}"' if listen else ""
    text = f"""
[webhook]
listen = "127.0.0.1:{hook_port}"
secret_env = "PUSHCD_TEST_SECRET"
{webhook_extra}

[repo]
path = "{repos.work}"
branch = "{repos.branch}"
{repo_extra}

[app]
command = {json.dumps(command)}
{listen_line}
stop_timeout = {app.get("stop_timeout", 5)}
{app.get("extra", "")}

[app.env]
PYTHONUNBUFFERED = "1"

[app.ready]
{ready_lines}

[watch]
{watch}

[control]
listen = "127.0.0.1:{control_port}"

[state]
dir = "{path.parent / 'state'}"

[deploy]
{deploy}

[release]
{release if "mode" in release else f'mode = "{RELEASE_MODE}"' + chr(10) + release}
{extra}
"""
    path.write_text(text)
    return path


@pytest.fixture(autouse=True)
def _secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUSHCD_TEST_SECRET", SECRET)


@contextlib.asynccontextmanager
async def running(config_path: Path) -> AsyncIterator[Any]:
    """The whole supervisor in this event loop (its children are real processes)."""
    from supervisor import config
    from supervisor.runner import build

    sup = build(config.load(config_path))
    try:
        await sup.start()
        yield sup
    finally:
        await sup.close()


@contextlib.asynccontextmanager
async def supervised(config_path: Path, session: aiohttp.ClientSession) -> AsyncIterator[tuple[Any, "Client"]]:
    """A running supervisor (see :func:`running`) and a :class:`Client` of it: the setup most tests share."""
    async with running(config_path) as sup:
        yield sup, Client(sup, session)


class Client:
    """Signed webhook deliveries and plain requests to the supervisor and its app."""

    def __init__(self, sup: Any, session: aiohttp.ClientSession) -> None:
        self.sup = sup
        self.session = session

    async def deliver(self, body: bytes, event: str = "push", *, delivery: str | None = None,
                      signature: str | None = "sign", headers: dict[str, str] | None = None,
                      content_type: str = "application/json") -> tuple[int, dict[str, Any]]:
        h = {"X-GitHub-Event": event, "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
             "Content-Type": content_type}
        if signature == "sign":
            h["X-Hub-Signature-256"] = sign(body)
        elif signature is not None:
            h["X-Hub-Signature-256"] = signature
        h.update(headers or {})
        async with self.session.post(self.sup.webhook_url, data=body, headers=h) as resp:
            text = await resp.text()
            try:
                return resp.status, json.loads(text)
            except ValueError:
                return resp.status, {"text": text}

    async def push(self, repos: Repos, sha: str, **kw: Any) -> tuple[int, dict[str, Any]]:
        body = json.dumps({"ref": f"refs/heads/{repos.branch}", "after": sha, "before": "0" * 40,
                           "repository": {"full_name": "test/app"}}).encode()
        return await self.deliver(body, **kw)

    async def ship(self, repos: Repos, files: dict[str, str | None], message: str) -> str:
        """Commit and push, send the webhook, wait until it is deployed; the new sha."""
        sha = repos.commit(files, message)
        await self.push(repos, sha)
        await deployed(self, sha)
        return sha

    async def app_get(self, path: str = "/") -> str:
        port = self.sup.web.port
        async with self.session.get(f"http://127.0.0.1:{port}{path}") as resp:
            assert resp.status == 200, resp.status
            return await resp.text()

    async def status(self) -> dict[str, Any]:
        async with self.session.get(f"http://127.0.0.1:{self.sup.control_port}/status") as resp:
            return await resp.json()

    async def control(self, method: str, path: str, **kw: Any) -> tuple[int, dict[str, Any]]:
        """A control API request as the CLI sends it (with the token)."""
        headers = {"Authorization": f"Bearer {self.sup.control_token.decode()}", **kw.pop("headers", {})}
        async with self.session.request(method, f"http://127.0.0.1:{self.sup.control_port}{path}",
                                        headers=headers, **kw) as resp:
            text = await resp.text()
            try:
                return resp.status, json.loads(text)
            except ValueError:
                return resp.status, {"text": text}


@contextlib.asynccontextmanager
async def site_of(app: web.Application) -> AsyncIterator[str]:
    """``app`` served on a free loopback port while the block runs (a notification receiver, another site):
    its base URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
        yield s


async def deployed(client: Client, sha: str, timeout: float = 30.0) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        st = await client.status()
        return st if st["deployed_commit"] == sha and st["state"] == "running" and st["child_pid"] else None

    return await eventually(check, timeout, f"deployed_commit == {sha[:12]}")


async def last_is(client: Client, sha: str, result: str) -> dict[str, Any] | None:
    """The status once the deploy of ``sha`` has ended with ``result`` and the worker is idle; else None."""
    st = await client.status()
    last = st["last_deploy"] or {}
    return st if last.get("commit") == sha and last.get("result") == result and st["state"] == "running" else None


async def cli(cfg: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """A pushcd command against ``cfg``, as a person types it: (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        PY, "-m", "supervisor", *args, "--config", str(cfg), cwd=ROOT, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, **(env or {})})
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode or 0, out.decode(), err.decode()


# -- a pushcd in its own process, seen from outside ---------------------------------

def try_status(cfg: Path) -> dict[str, Any] | None:
    """GET /status of the pushcd running ``cfg`` (a config written by :func:`write_config`); None while down."""
    port = cfg.read_text().split('[control]\nlisten = "127.0.0.1:')[1].split('"')[0]
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as resp:
            return json.load(resp)  # type: ignore[no-any-return]
    except OSError:
        return None


def signed_push(cfg: Path, repos: Repos, sha: str) -> None:
    """The webhook GitHub sends for a push of ``sha``, to the pushcd running ``cfg``."""
    port = cfg.read_text().split('[webhook]\nlisten = "127.0.0.1:')[1].split('"')[0]
    body = json.dumps({"ref": f"refs/heads/{repos.branch}", "after": sha}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/github", data=body, method="POST", headers={
        "X-GitHub-Event": "push", "X-Hub-Signature-256": sign(body), "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 202


def spawn_supervisor(config_path: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([PY, "-m", "supervisor", "run", "--config", str(config_path), *args],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def stop_process(proc: subprocess.Popen[str], sig: int = signal.SIGTERM, timeout: float = 30) -> str:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out or ""


Waiter = Callable[..., Awaitable[Any]]
