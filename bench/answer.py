#!/usr/bin/env python3
"""The webhook answer warm and cold, side by side: pushcd, adnanh/webhook (Go) and a bare
aiohttp app that only reads the body and answers (the floor of pushcd's stack).

"Warm": signed deliveries back to back. "Cold": the same, 0.25 s apart, so each one finds
the process idle (its caches cold), as a real push does. Each is a ``ping`` event: verified
and answered by every stack, and deploying nothing, so the figure is the answer alone.
Raw sockets, a new connection each, no load.

    .venv/bin/python bench/answer.py --warm 200 --cold 60

adnanh/webhook's stack needs ``apt-get install webhook supervisor``; without it, that row is
left out. Only 127.0.0.1; bounded in count.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import compare  # noqa: E402
from bench.common import pct  # noqa: E402
from bench.webhook_latency import SECRET, burst, floor_app  # noqa: E402
from tests.gitrepos import Repos  # noqa: E402

BODY = json.dumps({"zen": "Keep it logically awesome.", "hook_id": 1}).encode()
assert SECRET.decode() == compare.SECRET  # the stacks verify what burst() signs


def answer_ms(port: int, path: str) -> float:
    """One signed ping on a new connection: milliseconds from sending it to the end of the answer."""
    return burst(port, BODY, 1, path, "ping")[0] * 1000


def measure(port: int, path: str, warm: int, cold: int) -> dict[str, float]:
    for _ in range(20):
        answer_ms(port, path)  # first requests: imports, caches filled
    hot = [answer_ms(port, path) for _ in range(warm)]
    idle = []
    for _ in range(cold):
        time.sleep(0.25)  # the scenario (an idle process), not a synchronisation
        idle.append(answer_ms(port, path))
    return {"warm_p50": statistics.median(hot), "warm_p99": pct(hot, 99),
            "cold_p50": statistics.median(idle), "cold_p90": pct(idle, 90)}


def stack_of(name: str, root: Path, logs: Path) -> compare.Stack:
    repos = Repos(root / name, seed=compare.seed(root / f"{name}-seed"))
    return {"pushcd": compare.start_pushcd, "adnanh": compare.start_adnanh}[name](repos, logs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warm", type=int, default=200)
    parser.add_argument("--cold", type=int, default=60)
    args = parser.parse_args()
    names = ["adnanh", "pushcd"] if shutil.which("webhook") and Path("/usr/bin/supervisord").exists() else ["pushcd"]
    if names == ["pushcd"]:
        print("adnanh/webhook or supervisord is not installed (apt-get install webhook supervisor): "
              "that row is left out", flush=True)
    rows: list[tuple[str, dict[str, float]]] = []
    with tempfile.TemporaryDirectory(prefix="pushcd-bench-") as tmp:
        logs = Path(tmp) / "logs"
        logs.mkdir()
        for name in names:
            stack = stack_of(name, Path(tmp), logs)
            try:
                port = int(stack.hook_url.split(":")[2].split("/")[0])
                path = "/" + stack.hook_url.split("/", 3)[3]
                rows.append((stack.name, measure(port, path, args.warm, args.cold)))
            finally:
                stack.stop()
        with floor_app() as port:
            rows.append(("a bare aiohttp app that reads and answers", measure(port, "/github", args.warm, args.cold)))
    print(f"| | warm p50 / p99 (ms), {args.warm} back to back | cold p50 / p90 (ms), {args.cold} sent 0.25 s apart |")
    print("|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['warm_p50']:.2f} / {r['warm_p99']:.2f} | {r['cold_p50']:.2f} / {r['cold_p90']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
