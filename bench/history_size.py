"""How big history.db grows: 10,000 deliveries and 1,000 deploys, written as pushcd writes them.

Each deploy carries a reason and a 2 KB output tail (a failed release's last lines), each delivery a
reason; retention is the default (500 deploys, the last 10,000 delivery ids). Prints the size of
history.db (and its WAL) after each batch and at the end.

    .venv/bin/python bench/history_size.py
"""

from __future__ import annotations

import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from supervisor.ops.history import DeployRecord, History  # noqa: E402


def size(path: Path) -> float:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*")) / 1e6


def main(deliveries: int = 10_000, deploys: int = 1_000) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "history.db"
        history = History(path)
        started = time.monotonic()
        for i in range(deliveries):
            history.record_delivery(str(uuid.uuid4()), "push", "queued", f"push to main ({i:040x})")
            if i % 500 == 499:
                history.flush()  # as the supervisor does, twice a second
        history.flush()
        print(f"{deliveries} deliveries: {size(path):.2f} MB")
        tail = "Traceback (most recent call last): | " + "x" * 2000
        for i in range(deploys):
            now = time.time()
            history.record_deploy(DeployRecord(f"{i:040x}", f"{i + 1:040x}", "webhook", now - 1, now,
                                               "failed" if i % 4 == 0 else "ok", f"fast-forward {i}",
                                               tail if i % 4 == 0 else "", {"fetch": 0.1, "start": 0.3}))
        print(f"+ {deploys} deploys: {size(path):.2f} MB (kept: {len(history.deploys(10_000))} deploys)")
        history.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        history.close()
        print(f"after a checkpoint: {size(path):.2f} MB; {time.monotonic() - started:.1f} s in all")


if __name__ == "__main__":
    main()
