#!/usr/bin/env python3
"""Side by side, on the same Flask app and the same bounded load:

1. pushcd: the app under gunicorn on the held socket, health-gated swaps;
2. the stack it replaces: a Flask webhook blueprint that verifies the signature and pulls
   with GitPython, served by ``gunicorn --reload``;
3. the watchfiles CLI restarting gunicorn, with a separate webhook receiver doing the pull;
4. adnanh/webhook running ``git pull --ff-only`` and a graceful reload (``supervisorctl signal
   HUP``) of gunicorn under supervisord: the usual glue (Debian packages ``webhook`` and
   ``supervisor``; the stack is left out, and said so, when they are not installed).

For each: webhook answer latency (curl, in a process of its own, so the load's threads do not
hold up the client), push-to-new-release-serving, failed requests by kind, p99 request latency
during swaps vs outside, availability for 10 s after a broken commit, RSS and idle CPU of the
managing processes. Writes ``bench/RESULTS.md``.

    .venv/bin/pip install -e '.[test,bench]'
    .venv/bin/python bench/compare.py --deploys 20 --spacing 2

Only 127.0.0.1; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import cpu_seconds, free_port, free_ports, pct, rss_mb, session_pids, wait_http  # noqa: E402
from bench.common import start_pushcd as start_pushcd_process  # noqa: E402
from tests.gitrepos import Repos  # noqa: E402
from tests.load import Load  # noqa: E402

PY = sys.executable
BIN = Path(sys.executable).parent
SECRET = "bench-secret"

APP = '''from flask import Flask
from version import VERSION

app = Flask(__name__)


@app.get("/")
def index():
    return f"version {VERSION}\\ncommit {VERSION}\\n"


@app.get("/health")
def health():
    return "ok\\n"


if __import__("os").environ.get("LEGACY_HOOK"):
    from hook import bp
    app.register_blueprint(bp)
'''

# The webhook people write by hand: verify, then pull synchronously with GitPython.
HOOK = '''import hashlib, hmac, os, sys
import git
from flask import Blueprint, Flask, abort, request

bp = Blueprint("hook", __name__)
SECRET = os.environ["WEBHOOK_SECRET"].encode()
REPO = os.environ.get("REPO_DIR", os.path.dirname(os.path.abspath(__file__)))


@bp.post("/github")
def github():
    sig = request.headers.get("X-Hub-Signature-256", "")
    good = "sha256=" + hmac.new(SECRET, request.get_data(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(sig, good):
        abort(401)
    if request.headers.get("X-GitHub-Event") == "push":
        git.Repo(REPO).remotes.origin.pull("main", ff_only=True)
    return "ok\\n"


if __name__ == "__main__":
    app = Flask(__name__)
    app.register_blueprint(bp)
    app.run("127.0.0.1", int(sys.argv[1]), threaded=True)
'''


def seed(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "app.py").write_text(APP)
    (folder / "hook.py").write_text(HOOK)
    (folder / "version.py").write_text('VERSION = "0"\n')
    return folder


def post_push(url: str, sha: str, folder: Path) -> tuple[float, float, int]:
    """Send a signed push with curl: (when it started, on time.monotonic; seconds to the answer; status).

    curl runs in a process of its own: timed from this process, the answer would wait for the
    GIL behind the load's eight client threads (the switch interval is 5 ms), and that wait,
    not the server, would be the figure.
    """
    body = json.dumps({"ref": "refs/heads/main", "after": sha, "repository": {"full_name": "bench/app"}}).encode()
    path = folder / "push.json"
    path.write_bytes(body)
    headers = {"Content-Type": "application/json", "X-GitHub-Event": "push", "X-GitHub-Delivery": str(uuid.uuid4()),
               "X-Hub-Signature-256": "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()}
    argv = ["curl", "-s", "-o", "/dev/null", "-m", "30", "-w", "%{http_code} %{time_total}", "--data-binary",
            f"@{path}", *(a for k, v in headers.items() for a in ("-H", f"{k}: {v}")), url]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60).stdout.split()
    done = time.monotonic()
    status, seconds = (int(out[0]), float(out[1])) if len(out) == 2 else (0, 30.0)
    return done - seconds, seconds, status


@dataclass
class Stack:
    name: str
    app_port: int
    hook_url: str
    procs: list[subprocess.Popen] = field(default_factory=list)
    managers: list[int] = field(default_factory=list)  # the pids whose RSS we report (summed)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()

    def pids(self) -> list[int]:
        return [pid for p in self.procs for pid in session_pids(p.pid)]


def start_pushcd(repos: Repos, logs: Path) -> Stack:
    command = [str(BIN / "gunicorn"), "--bind", "fd://{fd}", "--bind", "fd://{probe_fd}", "--workers", "2",
               "--graceful-timeout", "10", "app:app"]
    proc, port, hook, _ = start_pushcd_process(repos.root, repos.work, command, SECRET, logs / "pushcd.log",
                                               extra="[watch]\ndebounce_ms = 100")
    return Stack("pushcd", port, f"http://127.0.0.1:{hook}/github", [proc], [proc.pid])


def start_legacy(repos: Repos, logs: Path) -> Stack:
    port = free_port()
    env = {**os.environ, "WEBHOOK_SECRET": SECRET, "LEGACY_HOOK": "1", "REPO_DIR": str(repos.work)}
    proc = subprocess.Popen([str(BIN / "gunicorn"), "--reload", "--workers", "2", "--bind", f"127.0.0.1:{port}",
                             "app:app"], cwd=repos.work, env=env, stdout=open(logs / "legacy.log", "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    wait_http(f"http://127.0.0.1:{port}/health")
    return Stack("gunicorn --reload + Flask/GitPython hook", port, f"http://127.0.0.1:{port}/github", [proc],
                 [proc.pid])


def start_watchfiles(repos: Repos, logs: Path) -> Stack:
    port, hook_port = free_ports(2)
    env = {**os.environ, "WEBHOOK_SECRET": SECRET, "REPO_DIR": str(repos.work)}
    gun = f"{BIN / 'gunicorn'} --workers 2 --bind 127.0.0.1:{port} app:app"
    wf = subprocess.Popen([str(BIN / "watchfiles"), "--filter", "python", gun, "."], cwd=repos.work, env=env,
                          stdout=open(logs / "watchfiles.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    hook = subprocess.Popen([PY, "hook.py", str(hook_port)], cwd=repos.work, env=env,
                            stdout=open(logs / "watchfiles-hook.log", "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    wait_http(f"http://127.0.0.1:{port}/health")
    wait_hook(f"http://127.0.0.1:{hook_port}/github")
    return Stack("watchfiles CLI + gunicorn, separate hook", port, f"http://127.0.0.1:{hook_port}/github",
                 [wf, hook], [wf.pid])


def wait_hook(url: str) -> None:
    """Until the hook answers an HTTP error to a GET (405 from Flask, 400 or 404 from adnanh/webhook)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within 30s")


SUPERVISORD_CONF = """[supervisord]
nodaemon = true
logfile = {folder}/supervisord.log
pidfile = {folder}/supervisord.pid
[unix_http_server]
file = {folder}/supervisor.sock
[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
[supervisorctl]
serverurl = unix://{folder}/supervisor.sock
[program:app]
command = {gunicorn} --workers 2 --graceful-timeout 10 --bind 127.0.0.1:{port} app:app
directory = {work}
stopasgroup = true
killasgroup = true
"""

# What adnanh/webhook runs for a verified push: the README's "git pull, then reload".
DEPLOY_SH = """#!/bin/sh
cd {work} && git pull -q --ff-only origin main && exec supervisorctl -c {folder}/supervisord.conf signal HUP app
"""


def start_adnanh(repos: Repos, logs: Path) -> Stack:
    port, hook_port = free_ports(2)
    folder = repos.root / "glue"
    folder.mkdir()
    (folder / "supervisord.conf").write_text(SUPERVISORD_CONF.format(folder=folder, gunicorn=BIN / "gunicorn",
                                                                     port=port, work=repos.work))
    deploy = folder / "deploy.sh"
    deploy.write_text(DEPLOY_SH.format(work=repos.work, folder=folder))
    deploy.chmod(0o755)
    signature = {"type": "payload-hmac-sha256", "secret": SECRET,
                 "parameter": {"source": "header", "name": "X-Hub-Signature-256"}}
    event = {"type": "value", "value": "push", "parameter": {"source": "header", "name": "X-GitHub-Event"}}
    (folder / "hooks.json").write_text(json.dumps([{
        "id": "github", "execute-command": str(deploy), "command-working-directory": str(repos.work),
        "trigger-rule": {"and": [{"match": signature}, {"match": event}]}}]))
    # Debian's supervisord is a Python program whose package is also called `supervisor`: the
    # system interpreter and a cwd outside this repository keep it from importing ours.
    sup = subprocess.Popen(["/usr/bin/supervisord", "-c", str(folder / "supervisord.conf")], cwd=folder,
                           stdout=open(logs / "supervisord.log", "w"), stderr=subprocess.STDOUT,
                           start_new_session=True)
    hook = subprocess.Popen(["webhook", "-hooks", str(folder / "hooks.json"), "-ip", "127.0.0.1", "-port",
                             str(hook_port)], cwd=folder, stdout=open(logs / "adnanh-webhook.log", "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    wait_http(f"http://127.0.0.1:{port}/health")
    wait_hook(f"http://127.0.0.1:{hook_port}/hooks/github")
    return Stack("adnanh/webhook + supervisord + gunicorn (HUP)", port, f"http://127.0.0.1:{hook_port}/hooks/github",
                 [sup, hook], [sup.pid, hook.pid])


def run_stack(starter, name: str, root: Path, deploys: int, spacing: float, clients: int, logs: Path) -> dict:
    repos = Repos(root / name, seed=seed(root / f"{name}-seed"))
    stack = starter(repos, logs)
    out: dict = {"stack": stack.name}
    try:
        time.sleep(1.0)  # let it settle before measuring idle (this is the scenario, not a sync)
        pids = stack.pids()
        c0 = cpu_seconds(pids)
        time.sleep(5.0)
        out["idle_cpu_pct"] = (cpu_seconds(pids) - c0) / 5.0 * 100
        out["manager_rss_mb"] = [rss_mb(pid) for pid in stack.managers]
        hook_lat, serve_times, windows = [], [], []
        with Load(stack.app_port, clients=clients, max_requests=10**6, max_seconds=deploys * spacing + 60,
                  timeout=10) as load:
            time.sleep(1.0)
            for i in range(1, deploys + 1):
                sha = repos.commit({"version.py": f'VERSION = "{i}"\n'}, f"v{i}")
                t_push, lat, status = post_push(stack.hook_url, sha, root)
                hook_lat.append(lat)
                served = None
                deadline = t_push + 30
                while time.monotonic() < deadline:
                    with load._lock:
                        if load.results.commits.get(str(i)):
                            served = time.monotonic()
                            break
                    time.sleep(0.005)
                serve_times.append((served or deadline) - t_push)
                windows.append((t_push, (served or deadline) + 0.5))
                time.sleep(max(0.0, spacing - (time.monotonic() - t_push)))
            # A broken commit: the old release must keep answering.
            sha = repos.commit({"version.py": "VERSION = (\n"}, "broken")
            t_broken, _, _ = post_push(stack.hook_url, sha, root)
            time.sleep(10.0)  # the measured window itself
        r = load.stop()
        window = [e for e in r.events if t_broken <= e[0] <= t_broken + 10.0]
        answered_old = sum(1 for _, kind, commit in window if kind is None and commit == str(deploys))
        failed_after = sum(1 for _, kind, _ in window if kind is not None)
        inside = [lat for start, lat in r.latencies if any(a <= start <= b for a, b in windows)]
        outside = [lat for start, lat in r.latencies if not any(a <= start <= b for a, b in windows)
                   and start < t_broken]
        out.update({
            "webhook_p50_ms": pct(hook_lat, 50) * 1000, "webhook_p99_ms": pct(hook_lat, 99) * 1000,
            "serve_median_s": statistics.median(serve_times), "serve_max_s": max(serve_times),
            "requests": r.ok + r.failed, "failures": dict(r.failures),
            "failures_deploys": _kinds(e for e in r.events if e[0] < t_broken),
            "failures_broken": _kinds(e for e in r.events if e[0] >= t_broken),
            "p99_swap_ms": pct(inside, 99) * 1000, "p99_outside_ms": pct(outside, 99) * 1000,
            "broken_availability_pct": 100.0 * answered_old / max(1, len(window)),
            "broken_failed": failed_after, "examples": r.examples[:3],
        })
    finally:
        stack.stop()
    return out


def _kinds(events) -> dict[str, int]:
    out: dict[str, int] = {}
    for _, kind, _ in events:
        if kind:
            out[kind] = out.get(kind, 0) + 1
    return out


def _fmt(kinds: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())) or "0"


def table(results: list[dict]) -> str:
    rows = [
        ("webhook answer p50 / p99 (ms)", lambda r: f"{r['webhook_p50_ms']:.1f} / {r['webhook_p99_ms']:.1f}"),
        ("push -> new release serving, median / max (s)", lambda r: f"{r['serve_median_s']:.2f} / {r['serve_max_s']:.2f}"),
        ("requests sent", lambda r: str(r["requests"])),
        ("failed requests during the deploys (by kind)", lambda r: _fmt(r["failures_deploys"])),
        ("failed requests after the broken commit (by kind)", lambda r: _fmt(r["failures_broken"])),
        ("p99 request latency during swaps / outside (ms)", lambda r: f"{r['p99_swap_ms']:.0f} / {r['p99_outside_ms']:.0f}"),
        ("10 s after a broken commit: answered by the old release", lambda r: f"{r['broken_availability_pct']:.1f}%"),
        ("manager RSS (MB)", lambda r: " + ".join(f"{mb:.1f}" for mb in r["manager_rss_mb"])),
        ("idle CPU, whole stack (% of one core)", lambda r: f"{r['idle_cpu_pct']:.2f}"),
    ]
    head = "| | " + " | ".join(r["stack"] for r in results) + " |\n|---|" + "---|" * len(results) + "\n"
    return head + "".join(f"| {label} | " + " | ".join(fn(r) for r in results) + " |\n" for label, fn in rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deploys", type=int, default=20)
    parser.add_argument("--spacing", type=float, default=2.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--only", choices=["pushcd", "legacy", "watchfiles", "adnanh"], action="append")
    parser.add_argument("--out", default=str(ROOT / "bench" / "RESULTS.md"))
    args = parser.parse_args()
    starters = {"pushcd": start_pushcd, "legacy": start_legacy, "watchfiles": start_watchfiles,
                "adnanh": start_adnanh}
    chosen = args.only or list(starters)
    if not (shutil.which("webhook") and Path("/usr/bin/supervisord").exists()) and "adnanh" in chosen:
        print("adnanh/webhook or supervisord is not installed (apt-get install webhook supervisor): "
              "that stack is left out", flush=True)
        chosen.remove("adnanh")
    results = []
    with tempfile.TemporaryDirectory(prefix="pushcd-bench-") as tmp:
        root = Path(tmp)
        logs = ROOT / "bench" / "out"
        logs.mkdir(exist_ok=True)
        for name in chosen:
            print(f"== {name}: {args.deploys} deploys, {args.spacing}s apart, {args.clients} clients", flush=True)
            results.append(run_stack(starters[name], name, root, args.deploys, args.spacing, args.clients, logs))
            print(json.dumps(results[-1], indent=1), flush=True)
    text = table(results)
    print(text)
    cmd = "python bench/compare.py " + " ".join(sys.argv[1:])
    section = (
        f"# bench/compare results\n\n- machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"{platform.python_implementation()} {platform.python_version()}, {platform.platform()}\n"
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n- command: `{cmd.strip()}`\n"
        f"- load: {args.clients} clients (a new connection per request), {args.deploys} deploys "
        f"{args.spacing:g} s apart, then one broken commit (syntax error) and 10 s of load\n\n{text}")
    out = Path(args.out)
    # Its own section only: the other benches' figures below it stay.
    rest = out.read_text().split("\n# ", 1)[1] if out.exists() and "\n# " in out.read_text() else ""
    out.write_text(section.rstrip("\n") + ("\n\n# " + rest if rest else "\n"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
