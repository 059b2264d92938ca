"""The embedded demo: a local origin seeded from ``examples/app`` and a clone of it.

``bootstrap`` runs before the config is checked (when ``[demo] bootstrap``),
so ``make run`` works on a fresh checkout; ``push`` makes a new commit in the
origin and sends the signed webhook GitHub would send. Both use pygit2 only.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pygit2

if TYPE_CHECKING:
    from .config import Config, Settings

_SKIP = {"__pycache__", ".git"}
_SIGNATURE = ("pushcd demo", "demo@pushcd.invalid")


def _tree_from_dir(repo: pygit2.Repository, folder: Path) -> pygit2.Oid:
    builder = repo.TreeBuilder()
    for entry in sorted(folder.iterdir()):
        if entry.name in _SKIP or entry.suffix == ".pyc":
            continue
        if entry.is_dir():
            builder.insert(entry.name, _tree_from_dir(repo, entry), pygit2.enums.FileMode.TREE)
        else:
            builder.insert(entry.name, repo.create_blob(entry.read_bytes()), pygit2.enums.FileMode.BLOB)
    return builder.write()


def bootstrap(raw: "Config", base: Path) -> None:
    work = (base / raw.repo.path).resolve()
    origin = (base / raw.demo.origin).resolve()
    secret_file = raw.webhook.secret_file
    if secret_file and not (base / secret_file).exists():
        path = base / secret_file
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_hex(20) + "\n")
        path.chmod(0o600)
    if work.exists():
        return
    if not origin.exists():
        source = (base / raw.demo.source).resolve()
        repo = pygit2.init_repository(str(origin), bare=True, initial_head=raw.repo.branch)
        sig = pygit2.Signature(*_SIGNATURE)
        repo.create_commit(f"refs/heads/{raw.repo.branch}", sig, sig, "Initial demo app",
                           _tree_from_dir(repo, source), [])
    pygit2.clone_repository(str(origin), str(work), checkout_branch=raw.repo.branch)
    print(f"demo: created origin {origin} and work tree {work}", flush=True)


def commit_to_origin(origin: Path, branch: str, message: str) -> str:
    """Change message.txt in the bare origin and commit; return the new sha."""
    repo = pygit2.Repository(str(origin))
    ref = repo.references[f"refs/heads/{branch}"]
    parent = repo[ref.target]
    builder = repo.TreeBuilder(parent.tree)
    builder.insert("message.txt", repo.create_blob((message + "\n").encode()), pygit2.enums.FileMode.BLOB)
    sig = pygit2.Signature(*_SIGNATURE)
    oid = repo.create_commit(ref.name, sig, sig, message, builder.write(), [parent.id])
    return str(oid)


def signed_push(url: str, secret: bytes, *, branch: str, after: str, full_name: str = "demo/app",
                timeout: float = 10.0) -> tuple[int, str]:
    """POST a push delivery signed as GitHub signs it; return (status, body)."""
    payload = {"ref": f"refs/heads/{branch}", "before": "0" * 40, "after": after, "created": False,
               "deleted": False, "forced": False, "repository": {"full_name": full_name},
               "head_commit": {"id": after}}
    body = json.dumps(payload).encode()
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json",
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": str(uuid.uuid4()),
        "X-Hub-Signature-256": "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest(),
        "User-Agent": "GitHub-Hookshot/pushcd-demo",
    })
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def push(settings: "Settings") -> int:
    raw = settings.raw
    origin = (settings.source.parent / raw.demo.origin).resolve()
    if not origin.exists():
        print(f"demo: no origin at {origin}; start the demo first (make run)")
        return 2
    sha = commit_to_origin(origin, raw.repo.branch, f"Deployed by pushcd at {time.strftime('%H:%M:%S')}")
    url = settings.webhook_listen.url() + raw.webhook.path
    try:
        status, body = signed_push(url, settings.secret, branch=raw.repo.branch, after=sha)
    except OSError as exc:
        print(f"demo: committed {sha[:12]}, but the webhook at {url} did not answer ({exc}); is `make run` running?")
        return 1
    print(f"demo: committed {sha[:12]} to {origin.name}; webhook answered {status} {body}")
    return 0 if status < 300 else 1


def banner(settings: "Settings", app_port: int | None, control_port: int) -> str:
    app_url = f"http://127.0.0.1:{app_port}/" if app_port else "(the app binds its own port)"
    cfg = os.path.relpath(settings.source)
    return (
        "\n  pushcd is running the demo.\n"
        f"    app:     {app_url}\n"
        f"    page:    {settings.control_listen.url(control_port)}/  (status, history; deploy, restart, pause)\n"
        "  Make a new commit and send the signed webhook (paste in another terminal):\n"
        f"    {_python()} -m supervisor demo-push --config {cfg}\n"
    )


def _python() -> str:
    rel = os.path.relpath(sys.executable)
    return str(sys.executable) if rel.startswith("..") else rel
