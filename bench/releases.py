#!/usr/bin/env python3
"""What releases cost: push-to-serving in snapshot mode against in-place, side by side in one run.

Two pushcd instances deploy the same commits of the demo app (with a requirements.txt, installed with
uv from a local folder of wheels: no network), one with ``[release] mode = "snapshot"`` and one with
``"in-place"`` (whose app runs with a virtualenv made beforehand with the same packages).
Each round pushes one commit and sends the signed webhook to both in turn (the order
alternates); the time is from sending the webhook until the app answers with the new commit.
Then, snapshot only: a commit that changes a dependency (an install, uv's cache cold for that package)
and one that changes the requirements file again with the same packages (an install, cache warm).

    .venv/bin/python bench/releases.py [--rounds 15]

Only 127.0.0.1; bounded in count and time.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import start_pushcd  # noqa: E402
from supervisor.releases.pyenv import uv_binary  # noqa: E402
from tests.gitrepos import Repos, git  # noqa: E402
from tests.wheels import make_wheel  # noqa: E402

SECRET = "bench-secret"


def send_hook(hook: int, branch: str, sha: str) -> None:
    body = json.dumps({"ref": f"refs/heads/{branch}", "after": sha, "repository": {"full_name": "b/app"}}).encode()
    sig = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    req = urllib.request.Request(f"http://127.0.0.1:{hook}/github", data=body, method="POST", headers={
        "X-GitHub-Event": "push", "X-GitHub-Delivery": str(uuid.uuid4()), "X-Hub-Signature-256": sig,
        "Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=10).read()


def serving(app: int, sha: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{app}/", timeout=5) as resp:
                if sha in resp.read().decode():
                    return
        except OSError:
            pass
        time.sleep(0.005)
    raise RuntimeError(f"{sha[:12]} not served within {timeout}s")


def status(ctl: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{ctl}/status", timeout=10) as resp:
        return json.load(resp)


def phases_of(ctl: int, sha: str, timeout: float = 60) -> dict[str, float]:
    """The recorded phases of the deploy of ``sha`` (recorded once the old release has drained)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        last = status(ctl)["last_deploy"] or {}
        if last.get("commit") == sha:
            return last["phases"]
        time.sleep(0.02)
    raise RuntimeError(f"no recorded deploy of {sha[:12]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pushcd-releases-") as tmp:
        root = Path(tmp)
        wheels = root / "wheels"
        for version in ("1.0", "2.0"):
            make_wheel(wheels, "tinydep", version)
        repos = Repos(root / "repos")
        repos.commit({"requirements.txt": "tinydep==1.0\n"}, "requirements")
        # In place, the app runs with a virtualenv made by hand (as one would with before_restart = pip install),
        # so both stacks start the same interpreter with the same packages: only the release mechanics differ.
        venv = root / "venv"
        uv = uv_binary() or "uv"
        subprocess.run([uv, "venv", "-q", "--python", "python3", str(venv)], check=True)
        subprocess.run([uv, "pip", "install", "-q", "--python", str(venv / "bin" / "python"), "--no-index",
                        "--find-links", str(wheels), "tinydep==1.0"], check=True)
        stacks = {}
        for mode in ("snapshot", "in-place"):
            python = "python3" if mode == "snapshot" else str(venv / "bin" / "python3")
            command = [python, "app.py", "--fd", "{fd}", "--fd", "{probe_fd}"]
            folder = root / mode
            folder.mkdir()
            work = folder / "work"
            git("clone", "-q", "-b", repos.branch, str(repos.origin), str(work), cwd=root)
            extra = (f'[release]\nmode = "{mode}"\ninstall_args = ["--no-index", "--find-links", "{wheels}"]\n'
                     f'[watch]\nenabled = false\n')
            stacks[mode] = start_pushcd(folder, work, command, SECRET, folder / "log.txt", extra)
        try:
            times: dict[str, list[float]] = {m: [] for m in stacks}
            phases: dict[str, list[dict[str, float]]] = {m: [] for m in stacks}
            for r in range(args.rounds):
                sha = repos.commit({"message.txt": f"round {r}\n"}, f"round {r}")
                for mode in (list(stacks) if r % 2 == 0 else list(reversed(stacks))):
                    _proc, app, hook, _ctl = stacks[mode]
                    t = time.perf_counter()
                    send_hook(hook, repos.branch, sha)
                    serving(app, sha)
                    times[mode].append(time.perf_counter() - t)
                    phases[mode].append(phases_of(stacks[mode][3], sha))
            for mode, values in times.items():
                print(f"{mode:>9}: push -> serving, unchanged dependencies, "
                      f"median {statistics.median(values) * 1000:.0f} ms, "
                      f"min {min(values) * 1000:.0f}, max {max(values) * 1000:.0f} ({len(values)} deploys)")
            for mode, rows in phases.items():
                names = sorted({n for r in rows for n in r})
                print(f"{mode:>9}: median phases (ms): " + ", ".join(
                    f"{n} {statistics.median([r.get(n, 0.0) for r in rows]) * 1000:.0f}" for n in names))
            diff = statistics.median(times["snapshot"]) - statistics.median(times["in-place"])
            print(f"snapshot - in-place, medians: {diff * 1000:+.0f} ms")
            _proc, app, hook, ctl = stacks["snapshot"]
            for label, text in (("new dependency version (uv cache cold for it)", "tinydep==2.0\n"),
                                ("same packages, requirements file changed (uv cache warm)",
                                 "tinydep==2.0\n# pinned\n")):
                sha = repos.commit({"requirements.txt": text}, label)
                t = time.perf_counter()
                send_hook(hook, repos.branch, sha)
                serving(app, sha)
                took = time.perf_counter() - t
                done = phases_of(ctl, sha)
                print(f"snapshot: {label}: push -> serving {took:.2f} s, "
                      f"of which install {done.get('install', 0):.2f} s")
        finally:
            for proc, *_ in stacks.values():
                proc.terminate()
                proc.wait(30)


if __name__ == "__main__":
    main()
