#!/usr/bin/env python3
"""Scale figures.

1. A repository with 20,000 files and a long history (made with ``git fast-import``):
   pushcd's fetch + fast-forward (the same WorkTree code the deployer runs) against
   ``git pull --ff-only`` on the same change, in two identical clones; and the
   supervisor's memory while it deploys that repository.
   Then pushes that change 3,000 and 20,000 files at once, and a diverged push with 5,000
   changed paths (``--big``): the cost must be linear in the size of the change.
2. A burst of 2,000 signed deliveries in 10 s at a running supervisor: no 5xx, at most
   one deploy running at any time, memory back to its baseline afterwards.

    .venv/bin/python bench/scale.py [--files 20000] [--history 2000] [--burst 2000]

Only 127.0.0.1; bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import rss_mb, start_pushcd  # noqa: E402
from supervisor.releases import snapshot  # noqa: E402
from supervisor.git.tree import WorkTree  # noqa: E402
from tests.gitrepos import EXAMPLE_APP, git  # noqa: E402

SECRET = b"bench-secret"


def fast_import(repo: Path, files: int, history: int) -> None:
    """A first commit with `files` files, then `history` commits touching a few each."""
    lines: list[bytes] = []
    mark = 0

    def blob(data: bytes) -> int:
        nonlocal mark
        mark += 1
        lines.append(b"blob\nmark :%d\ndata %d\n%s\n" % (mark, len(data), data))
        return mark

    now = int(time.time()) - history * 60
    first = {f"src/pkg{i // 500:03d}/mod{i:05d}.py": blob(f"X = {i}\n".encode()) for i in range(files)}
    for name in os.listdir(EXAMPLE_APP):
        if (EXAMPLE_APP / name).is_file():
            first[name] = blob((EXAMPLE_APP / name).read_bytes())
    msg = b"initial"
    lines.append(b"commit refs/heads/main\ncommitter B <b@example.invalid> %d +0000\ndata %d\n%s\n"
                 % (now, len(msg), msg))
    for path, m in first.items():
        lines.append(b"M 100644 :%d %s\n" % (m, path.encode()))
    for c in range(history):
        touched = {f"src/pkg{(c * 7) % max(1, files // 500):03d}/mod{(c * 13 + k) % files:05d}.py": k for k in range(3)}
        msg = b"change %d" % c
        lines.append(b"commit refs/heads/main\ncommitter B <b@example.invalid> %d +0000\ndata %d\n%s\n"
                     % (now + 60 * (c + 1), len(msg), msg))
        for path, k in touched.items():
            lines.append(b"M 100644 inline %s\ndata %d\n%s\n" % (path.encode(), len(f"X = {c}.{k}\n"),
                                                               f"X = {c}.{k}\n".encode()))
    subprocess.run(["git", "fast-import", "--quiet"], cwd=repo, input=b"".join(lines), check=True)


STEPS: dict[str, list[float]] = {}  # seconds of each step, ours and git's, over the rounds


def _step(name: str, started: float) -> float:
    now = time.perf_counter()
    STEPS.setdefault(name, []).append(now - started)
    return now


def fast_forward_both(tree: WorkTree, theirs: Path) -> tuple[float, float, float, int]:
    """The pushed tip into both clones: pushcd's fetch + facts + move, then git's fetch and ``merge
    --ff-only`` (what ``git pull --ff-only`` runs). Seconds for ours, of them to the facts, for git; and how
    many paths changed. Each step's time goes to STEPS."""
    t0 = t = time.perf_counter()
    tip = tree.fetch()
    t = _step("pushcd fetch", t)
    facts = tree.facts(tip)
    t = _step("pushcd facts", t)
    facts_s = t - t0
    assert facts.head_is_ancestor and not facts.blocking
    tree.move_to(tip, "bench", facts)
    t = _step("pushcd move (checkout, index, ref)", t)
    ours_s = t - t0
    t0 = t = time.perf_counter()
    subprocess.run(["git", "fetch", "-q", "origin", "main"], cwd=theirs, check=True, stderr=subprocess.DEVNULL)
    t = _step("git fetch", t)
    subprocess.run(["git", "merge", "-q", "--ff-only", "FETCH_HEAD"], cwd=theirs, check=True,
                   stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    t = _step("git merge --ff-only", t)
    theirs_s = t - t0
    assert git("rev-parse", "HEAD", cwd=tree.path) == git("rev-parse", "HEAD", cwd=theirs) == tip
    return ours_s, facts_s, theirs_s, len(facts.changed)


def scale_git(root: Path, files: int, history: int, rounds: int) -> dict:
    origin, dev = root / "origin.git", root / "dev"
    git("init", "-q", "--bare", "-b", "main", str(origin), cwd=root)
    t = time.perf_counter()
    fast_import(origin, files, history)
    made = time.perf_counter() - t
    git("clone", "-q", str(origin), str(dev), cwd=root)
    ours, theirs = root / "pushcd", root / "gitcli"
    for d in (ours, theirs):
        git("clone", "-q", str(origin), str(d), cwd=root)
    tree = WorkTree(ours, "origin", "main")
    releases = root / "releases"
    releases.mkdir()
    content = snapshot.of_commit(tree.repo, tree.head())
    t = time.perf_counter()
    snapshot.write(tree.repo, content, releases / content.id, workdir=ours)
    first_release_s = time.perf_counter() - t
    base = snapshot.Base(releases / content.id, content)
    spares = root / "spare"
    ours_t, theirs_t, release_t, added_kb, spare_t = [], [], [], [], []
    for r in range(rounds):
        for k in range(20):  # one push touching 20 files
            p = dev / f"src/pkg000/mod{(r * 20 + k) % files:05d}.py"
            p.write_text(f"X = 'round {r} {k}'\n")
        git("-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qam", f"round {r}", cwd=dev)
        git("push", "-q", "origin", "HEAD:main", cwd=dev)
        # What pushcd does while idle after a deploy: link the live release's files into a spare folder.
        t = time.perf_counter()
        snapshot.make_spare(tree.repo, base, spares / base.root.name)
        spare_t.append(time.perf_counter() - t)
        ours_s, _facts_s, theirs_s, _changed = fast_forward_both(tree, theirs)
        t = time.perf_counter()  # and the release directory of the new tip, from the spare: only changes written
        content = snapshot.of_commit(tree.repo, tree.head())
        snapshot.write(tree.repo, content, releases / content.id, workdir=ours, base=base,
                       spare=spares / base.root.name)
        snapshot.seal(releases / content.id)
        release_t.append(time.perf_counter() - t)
        # du counts an inode once per run: the second figure is what the new release adds on the disk
        du = subprocess.run(["du", "-sk", str(base.root), str(releases / content.id)], capture_output=True,
                            text=True, check=True).stdout.split()
        added_kb.append(int(du[2]))
        base = snapshot.Base(releases / content.id, content)
        ours_t.append(ours_s)
        theirs_t.append(theirs_s)
    assert git("status", "--porcelain", cwd=ours) == ""
    return {"files": files, "history": history, "fast_import_s": made, "rounds": rounds,
            "pushcd_ms": statistics.median(ours_t) * 1000, "pushcd_max_ms": max(ours_t) * 1000,
            "git_pull_ms": statistics.median(theirs_t) * 1000, "git_pull_max_ms": max(theirs_t) * 1000,
            "release_ms": statistics.median(release_t) * 1000, "release_max_ms": max(release_t) * 1000,
            "first_release_s": first_release_s, "release_added_kb": statistics.median(added_kb),
            "spare_ms": statistics.median(spare_t) * 1000,
            "origin": origin, "dev": dev}


def big_changes(root: Path, g: dict, sizes: list[int]) -> None:
    """Pushes that change many files at once: pushcd's fetch + facts + move vs ``git pull --ff-only``,
    and the decision to refuse a diverged push (facts only). Linear, not quadratic, in the change."""
    dev, ours, theirs = g["dev"], root / "pushcd", root / "gitcli"
    tree = WorkTree(ours, "origin", "main")
    files = sorted(p for p in (dev / "src").rglob("*.py"))
    for n, size in enumerate(sizes):
        for p in files[:size]:
            p.write_text(f"X = 'big {n} {p.name}'\n")
        git("-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qam", f"big {size}", cwd=dev)
        git("push", "-q", "origin", "HEAD:main", cwd=dev)
        ours_s, t_facts, theirs_s, changed = fast_forward_both(tree, theirs)
        assert changed >= size and git("status", "--porcelain", cwd=ours) == ""
        peak_ours = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # libgit2 runs in this process
        peak_git = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the largest git child so far
        print(f"a push changing {size} files: pushcd fetch + facts + move {ours_s:.2f} s (facts {t_facts:.2f} s), "
              f"git pull --ff-only {theirs_s:.2f} s; peak RSS so far: this process (libgit2) {peak_ours:.0f} MB, "
              f"the largest git child {peak_git:.0f} MB")
    # A force-push that rewrote history with many changed paths: only the decision to refuse is timed.
    size = min(5000, len(files))
    git("reset", "-q", "--hard", "HEAD~1", cwd=dev)
    for p in files[:size]:
        p.write_text(f"X = 'diverged {p.name}'\n")
    git("-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qam", "diverged", cwd=dev)
    git("push", "-q", "--force", "origin", "HEAD:main", cwd=dev)
    t = time.perf_counter()
    facts = tree.facts(tree.fetch())
    print(f"a diverged push with {len(facts.changed)} changed paths: fetch + facts (refused) "
          f"{time.perf_counter() - t:.2f} s")


HUGE = """
import resource, sys, time
sys.path.insert(0, sys.argv[2])
from supervisor.git.tree import WorkTree, blob_id
from pathlib import Path
tree = WorkTree(Path(sys.argv[1]), "origin", "main")
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t = time.perf_counter()
tip = tree.fetch()
after_fetch = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
tree.move_to(tip, "bench", tree.facts(tip))
after_move = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
blob_id(Path(sys.argv[1]) / "huge.bin")  # what the watcher reads to recognise our own write
after_watch = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"{base:.0f} {after_fetch:.0f} {after_move:.0f} {after_watch:.0f} {time.perf_counter() - t:.1f}")
"""


def huge_file(root: Path, megabytes: int) -> None:
    """A commit that adds one file of ``megabytes`` MB: peak memory of fetch, move and the watcher's check."""
    origin, dev, work = root / "huge.git", root / "huge-dev", root / "huge-work"
    git("init", "-q", "--bare", "-b", "main", str(origin), cwd=root)
    git("clone", "-q", str(origin), str(dev), cwd=root)
    git("checkout", "-q", "-b", "main", cwd=dev)
    (dev / "app.py").write_text("print('hi')\n")
    git("add", "-A", cwd=dev)
    git("-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "first", cwd=dev)
    git("push", "-q", "origin", "HEAD:main", cwd=dev)
    git("clone", "-q", str(origin), str(work), cwd=root)
    with open(dev / "huge.bin", "wb") as f:
        for _ in range(megabytes):
            f.write(os.urandom(1 << 20))  # incompressible: the worst case for pack and checkout
    git("add", "-A", cwd=dev)
    git("-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "huge", cwd=dev)
    git("push", "-q", "origin", "HEAD:main", cwd=dev)
    out = subprocess.run([sys.executable, "-c", HUGE, str(work), str(ROOT)], capture_output=True, text=True,
                         check=True).stdout.split()
    base, fetched, moved, watched, took = out
    print(f"a commit adding a {megabytes} MB file: peak RSS {base} MB at start, {fetched} MB after fetch, "
          f"{moved} MB after the checkout, {watched} MB after the watcher's check ({took} s)")


def start_supervisor(root: Path, origin: Path) -> tuple[subprocess.Popen, int, int, Path]:
    work = root / "deployed"
    git("clone", "-q", str(origin), str(work), cwd=root)
    proc, _app, hook, ctl = start_pushcd(root, work, [sys.executable, "app.py", "--fd", "{fd}", "--fd", "{probe_fd}"],
                                         SECRET.decode(), extra='[watch]\nignore = ["src/*"]')
    return proc, hook, ctl, work


def control(ctl: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{ctl}{path}", timeout=10) as resp:
        return json.load(resp)


async def burst(hook: int, ctl: int, dev: Path, n: int, seconds: float, commits: int = 10, label: int = 1) -> dict:
    url = f"http://127.0.0.1:{hook}/github"
    statuses: dict[int, int] = {}
    tips = []

    async def one(i: int, session: aiohttp.ClientSession, body: bytes) -> None:
        sig = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
        try:
            async with session.post(url, data=body, headers={
                    "X-GitHub-Event": "push", "X-GitHub-Delivery": str(uuid.uuid4()), "X-Hub-Signature-256": sig,
                    "Content-Type": "application/json"}) as resp:
                await resp.read()
                statuses[resp.status] = statuses.get(resp.status, 0) + 1
        except aiohttp.ClientError:
            statuses[0] = statuses.get(0, 0) + 1

    start = time.monotonic()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100)) as session:
        tasks = []
        for i in range(n):
            if i == 0 or commits and i % (n // commits or 1) == 0:  # new commits during the burst
                (dev / "message.txt").write_text(f"burst {label}.{i}\n")
                git("-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qam", f"burst {label}.{i}", cwd=dev)
                git("push", "-q", "origin", "HEAD:main", cwd=dev)
                tips.append(git("rev-parse", "HEAD", cwd=dev))
            body = json.dumps({"ref": "refs/heads/main", "after": tips[-1]}).encode()
            delay = start + i * seconds / n - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, session, body)))
        await asyncio.gather(*tasks)
    return {"statuses": statuses, "took_s": time.monotonic() - start, "last_tip": tips[-1]}


def one_burst(proc: subprocess.Popen, hook: int, ctl: int, dev: Path, args: argparse.Namespace,
              n: int) -> tuple[float, float, float]:
    """Send one burst, wait until its last commit is live and the queue is empty; (peak, after, after anon)."""
    peak = rss_mb(proc.pid)
    result: dict = {}
    before = len(control(ctl, "/history?limit=1000")["deploys"])

    async def run_burst() -> None:
        nonlocal peak, result
        task = asyncio.create_task(burst(hook, ctl, dev, args.burst, args.seconds, args.commits, n))
        while not task.done():
            peak = max(peak, rss_mb(proc.pid))
            await asyncio.sleep(0.05)
        result = task.result()

    asyncio.run(run_burst())
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        st = control(ctl, "/status")
        if st["deployed_commit"] == result["last_tip"] and st["state"] == "running" and not st["queue"]:
            break
        time.sleep(0.2)
    time.sleep(5.0)  # let it go idle again before reading memory
    deploys = control(ctl, "/history?limit=1000")["deploys"]
    spans = sorted((d["started_at"], d["ended_at"]) for d in deploys)
    overlap = any(b[0] < a[1] for a, b in zip(spans, spans[1:]))
    print(f"burst {n}: {args.burst} signed deliveries in {result['took_s']:.1f}s: answers {result['statuses']}; "
          f"{len(deploys) - before} deploys for {max(1, args.commits)} new commits, overlapping: {overlap}; "
          f"final commit deployed: {st['deployed_commit'] == result['last_tip']}")
    return peak, rss_mb(proc.pid), rss_mb(proc.pid, "RssAnon")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--history", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--burst", type=int, default=2_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--commits", type=int, default=10, help="new commits pushed during each burst")
    parser.add_argument("--bursts", type=int, default=2, help="bursts one after another (a residue that "
                                                                 "grows with each would be a leak)")
    parser.add_argument("--huge-mb", type=int, default=300, help="size of one file in a commit, for peak "
                                                                    "memory (0: skip)")
    parser.add_argument("--big", default="3000,20000", help="sizes of pushes that change many files at once "
                                                            "(comma-separated; empty: skip)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pushcd-scale-") as tmp:
        root = Path(tmp)
        if args.huge_mb:
            huge_file(root, args.huge_mb)
        g = scale_git(root, args.files, args.history, args.rounds)
        print(f"repository: {g['files']} files, {g['history'] + 1} commits (fast-import {g['fast_import_s']:.1f}s)")
        print(f"fetch + fast-forward of a 20-file push, median of {g['rounds']}: pushcd (libgit2) "
              f"{g['pushcd_ms']:.0f} ms (max {g['pushcd_max_ms']:.0f}), git pull --ff-only "
              f"{g['git_pull_ms']:.0f} ms (max {g['git_pull_max_ms']:.0f})")
        print("  by step, median: " + ", ".join(f"{k} {statistics.median(v) * 1000:.0f} ms" for k, v in STEPS.items()))
        both = g["pushcd_ms"] + g["release_ms"]
        print(f"  with the release directory built (snapshot mode): {both:.0f} ms = {both / g['git_pull_ms']:.2f}x "
              f"git pull --ff-only (release alone: median {g['release_ms']:.0f} ms, max {g['release_max_ms']:.0f}; "
              f"the first, of all {g['files']} files: {g['first_release_s']:.1f} s); each release adds "
              f"{g['release_added_kb']:.0f} kB on disk; the spare link farm made while idle after each deploy: "
              f"median {g['spare_ms']:.0f} ms")
        if args.big:
            big_changes(root, g, [int(x) for x in args.big.split(",")])
            git("fetch", "-q", "origin", cwd=g["dev"])
            git("reset", "-q", "--hard", "origin/main", cwd=g["dev"])
        proc, hook, ctl, work = start_supervisor(root, g["origin"])
        try:
            time.sleep(1.0)  # settle before the baseline (the scenario, not a sync)
            base = rss_mb(proc.pid)
            base_anon = rss_mb(proc.pid, "RssAnon")
            print(f"supervisor RSS before: {base:.1f} MB, of which anonymous (heap, not mapped files) {base_anon:.1f} MB")
            for n in range(1, args.bursts + 1):
                peak, after, after_anon = one_burst(proc, hook, ctl, g["dev"], args, n)
                print(f"  after burst {n}: RSS {after:.1f} MB (peak {peak:.1f}), anonymous {after_anon:.1f} MB "
                      f"({after_anon - base_anon:+.1f} MB on the baseline)")
        finally:
            proc.terminate()
            proc.wait(30)


if __name__ == "__main__":
    main()
