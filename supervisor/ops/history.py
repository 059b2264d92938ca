"""Deploy and delivery history in SQLite, under ``[state] dir``.

WAL mode, numbered schema migrations from the first version on, bounded
retention. It also remembers what must survive a restart: delivery ids (a
redelivery stays a duplicate) and commits marked bad.

Writes are small and local, so they run on the event loop; a write that fails
(full disk, read-only folder) is logged and dropped: history is never a reason
to refuse a deploy or a webhook.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "state.db"
>>> h = History(path)
>>> h.record_delivery("d1", "push", "queued", "push to main")
>>> h.close()
>>> again = History(path)     # after a restart, a redelivery is still a duplicate
>>> "d1" in again.seen, "d2" in again.seen
(True, False)
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..webhook.delivery import SeenDeliveries

log = logging.getLogger("supervisor.history")

# Append only: each entry moves the schema one version up; never edit a shipped one.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE deliveries (
        id TEXT PRIMARY KEY, event TEXT, received_at REAL NOT NULL, verdict TEXT NOT NULL, reason TEXT);
    CREATE INDEX deliveries_received ON deliveries (received_at);
    CREATE TABLE deploys (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, from_commit TEXT, to_commit TEXT, trigger TEXT NOT NULL,
        started_at REAL NOT NULL, ended_at REAL NOT NULL, duration REAL NOT NULL, result TEXT NOT NULL,
        reason TEXT, output_tail TEXT, phases TEXT);
    CREATE TABLE bad_commits (sha TEXT PRIMARY KEY, reason TEXT NOT NULL, marked_at REAL NOT NULL);
    """,
    # 2: every commit that went live and passed its checks (start-up included), for rollbacks.
    """
    CREATE TABLE releases (sha TEXT PRIMARY KEY, live_at REAL NOT NULL);
    INSERT OR IGNORE INTO releases (sha, live_at)
        SELECT to_commit, MAX(ended_at) FROM deploys WHERE result = 'ok' GROUP BY to_commit;
    """,
    # 3: what a row records: a deploy, a restart, a rollback or a start (all were "deploys" before).
    """
    ALTER TABLE deploys ADD COLUMN kind TEXT NOT NULL DEFAULT 'deploy';
    """,
    # 4: config vars: a release is a commit and the digest of its config vars (a rollback brings both back);
    # a row records the digest the release serving after it runs with.
    """
    CREATE TABLE releases_4 (sha TEXT NOT NULL, config TEXT NOT NULL DEFAULT '', live_at REAL NOT NULL,
                             PRIMARY KEY (sha, config));
    INSERT INTO releases_4 (sha, config, live_at) SELECT sha, '', live_at FROM releases;
    DROP TABLE releases;
    ALTER TABLE releases_4 RENAME TO releases;
    ALTER TABLE deploys ADD COLUMN config TEXT NOT NULL DEFAULT '';
    """,
    # 5: every run of a scheduled job (skipped ones too: nothing a schedule decides is silent).
    """
    CREATE TABLE job_runs (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, job TEXT NOT NULL, trigger TEXT NOT NULL, scheduled_at REAL NOT NULL,
        started_at REAL, ended_at REAL NOT NULL, result TEXT NOT NULL, exit_code INTEGER, release TEXT,
        commit_sha TEXT, reason TEXT, output_tail TEXT);
    CREATE INDEX job_runs_job ON job_runs (job, seq);
    """,
]


@dataclass(frozen=True)
class DeployRecord:
    from_commit: str
    to_commit: str
    trigger: str
    started_at: float
    ended_at: float
    result: str
    reason: str
    output_tail: str = ""
    phases: dict[str, float] | None = None
    kind: str = "deploy"  # deploy, restart, rollback, start, config
    config: str = ""  # the config vars digest of the release serving after it


class History:
    def __init__(self, path: Path, retention: int = 500, delivery_retention: int = 10_000,
                 problem: str | None = None) -> None:
        self.path = path
        self.retention = retention
        self.delivery_retention = delivery_retention
        self.problem = problem  # why history is not being kept on disk (None: it is)
        if str(path) != ":memory:":
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            # Deploy reasons and delivery ids are nobody else's business: 0600 (WAL files inherit it).
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
            if path.stat().st_mode & 0o077:
                path.chmod(0o600)
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA busy_timeout=2000")
        self._migrate()
        # Duplicates are answered from memory, loaded here (newest last) from the table that keeps as
        # many rows, so a redelivery stays a duplicate across restarts without a query per webhook.
        rows = self.db.execute("SELECT id FROM deliveries WHERE verdict != 'bad_request' AND id NOT LIKE '-%' "
                               "ORDER BY received_at DESC LIMIT ?", (delivery_retention,)).fetchall()
        self.seen = SeenDeliveries(delivery_retention)
        for row in reversed(rows):
            self.seen.add(row["id"])
        self._writes = 0
        self._pending: list[tuple[Any, ...]] = []  # deliveries waiting to be written in one transaction

    @classmethod
    def open(cls, path: Path, retention: int = 500) -> "History":
        """The history at ``path``; if it cannot be opened (corrupt, unwritable, newer schema), an
        in-memory one with :attr:`problem` set, so pushcd runs (and says so) instead of refusing to start."""
        try:
            return cls(path, retention)
        except Exception as exc:  # noqa: BLE001 - sqlite3.Error, OSError, a newer schema
            problem = (f"cannot open {path} ({exc}); running without history: deploys, deliveries and bad marks "
                       f"are kept in memory only. Move the file away (pushcd makes a new one) or fix its "
                       f"permissions, then restart pushcd")
            log.error("history: %s", problem)
            return cls(Path(":memory:"), retention, problem=problem)

    def _migrate(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise RuntimeError(f"{self.path} has schema version {version}, newer than this pushcd knows "
                               f"({len(MIGRATIONS)}); upgrade pushcd or point [state] dir elsewhere")
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            # One transaction per step: a crash mid-migration leaves the previous version intact.
            try:
                self.db.executescript(f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;")
            except sqlite3.Error:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise

    def _write(self, sql: str, params: tuple[Any, ...] | dict[str, Any]) -> None:
        try:
            self.db.execute(sql, params)
        except sqlite3.Error as exc:
            log.error("history: cannot write to %s (%s); continuing without it", self.path, exc)
            return
        self._wrote(1)

    def _wrote(self, rows: int) -> None:
        """Prune every hundred rows written, so retention holds without a timer."""
        self._writes += rows
        if self._writes >= 100:
            self._writes = 0
            self.prune()

    def record_delivery(self, delivery: str | None, event: str | None, verdict: str, reason: str) -> None:
        """Queue a delivery row; :meth:`flush` writes the queue in one transaction.

        Webhooks can arrive by the thousand: one commit per batch keeps the answer fast.
        """
        if verdict in ("duplicate", "unauthorized"):
            # A duplicate is already on record; an unsigned request must not claim a delivery id.
            delivery = None
        self._pending.append((delivery or f"-{time.time_ns()}", event, time.time(), verdict, reason))
        if len(self._pending) >= 500:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        rows, self._pending = self._pending, []
        try:
            with self.db:  # one transaction
                self.db.execute("BEGIN")
                self.db.executemany("INSERT OR REPLACE INTO deliveries (id, event, received_at, verdict, reason) "
                                    "VALUES (?,?,?,?,?)", rows)
        except sqlite3.Error as exc:
            log.error("history: cannot write %d deliveries to %s (%s); continuing without them",
                      len(rows), self.path, exc)
            return
        self._wrote(len(rows))

    def record_deploy(self, rec: DeployRecord) -> None:
        self._write(
            "INSERT INTO deploys (from_commit, to_commit, trigger, started_at, ended_at, duration, result, reason,"
            " output_tail, phases, kind, config) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (rec.from_commit, rec.to_commit, rec.trigger, rec.started_at, rec.ended_at,
             round(rec.ended_at - rec.started_at, 4), rec.result, rec.reason, rec.output_tail,
             json.dumps(rec.phases or {}), rec.kind, rec.config))

    def mark_bad(self, sha: str, reason: str) -> None:
        self._write("INSERT OR REPLACE INTO bad_commits (sha, reason, marked_at) VALUES (?,?,?)",
                    (sha, reason, time.time()))

    def unmark_bad(self, sha: str) -> None:
        self._write("DELETE FROM bad_commits WHERE sha = ?", (sha,))

    def bad_commits(self) -> dict[str, str]:
        return {row["sha"]: row["reason"] for row in self.db.execute("SELECT sha, reason FROM bad_commits")}

    def deploys(self, limit: int = 50, before: int | None = None) -> list[dict[str, Any]]:
        sql = "SELECT * FROM deploys" + (" WHERE seq < ?" if before else "") + " ORDER BY seq DESC LIMIT ?"
        rows = self.db.execute(sql, ((before, limit) if before else (limit,))).fetchall()
        out = []
        for row in rows:
            item = dict(row)
            item["phases"] = json.loads(item["phases"] or "{}")
            out.append(item)
        return out

    def deliveries(self, limit: int = 50, before: float | None = None) -> list[dict[str, Any]]:
        self.flush()
        sql = ("SELECT * FROM deliveries" + (" WHERE received_at < ?" if before else "")
               + " ORDER BY received_at DESC LIMIT ?")
        rows = self.db.execute(sql, ((before, limit) if before else (limit,))).fetchall()
        return [dict(r) for r in rows]

    def record_release(self, sha: str, config: str = "") -> None:
        self._write("INSERT OR REPLACE INTO releases (sha, config, live_at) VALUES (?, ?, ?)",
                    (sha, config, time.time()))

    def good_releases(self) -> Iterator[tuple[str, str]]:
        """(commit, config vars digest) of the releases that went live successfully, newest first."""
        for row in self.db.execute("SELECT sha, config FROM releases ORDER BY live_at DESC LIMIT 1000"):
            yield row["sha"], row["config"]

    def record_job_run(self, run: dict[str, Any]) -> None:
        """One run of a scheduled job (see :class:`supervisor.schedule.JobRun`), ended or skipped."""
        self._write("INSERT INTO job_runs (job, trigger, scheduled_at, started_at, ended_at, result, exit_code,"
                    " release, commit_sha, reason, output_tail) VALUES (:job, :trigger, :scheduled_at, :started_at,"
                    " :ended_at, :result, :exit_code, :release, :commit_sha, :reason, :output_tail)", run)

    def job_runs(self, job: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        sql = "SELECT * FROM job_runs" + (" WHERE job = ?" if job else "") + " ORDER BY seq DESC LIMIT ?"
        return [dict(r) for r in self.db.execute(sql, ((job, limit) if job else (limit,)))]

    def last_job_runs(self) -> dict[str, dict[str, Any]]:
        """Each job's newest run, and (``last_success``) when one last ended well."""
        out: dict[str, dict[str, Any]] = {}
        for row in self.db.execute("SELECT * FROM job_runs WHERE seq IN (SELECT MAX(seq) FROM job_runs GROUP BY job)"):
            out[row["job"]] = dict(row)
        for row in self.db.execute("SELECT job, MAX(ended_at) AS t FROM job_runs WHERE result = 'ok' GROUP BY job"):
            out.setdefault(row["job"], {})["last_success"] = row["t"]
        return out

    def prune(self) -> None:
        try:
            self.db.execute("DELETE FROM job_runs WHERE seq <= (SELECT seq FROM job_runs ORDER BY seq DESC "
                            "LIMIT 1 OFFSET ?)", (self.retention * 10,))
            self.db.execute("DELETE FROM deploys WHERE seq <= (SELECT seq FROM deploys ORDER BY seq DESC "
                            "LIMIT 1 OFFSET ?)", (self.retention,))
            self.db.execute("DELETE FROM deliveries WHERE received_at <= (SELECT received_at FROM deliveries "
                            "ORDER BY received_at DESC LIMIT 1 OFFSET ?)", (self.delivery_retention,))
            self.db.execute("DELETE FROM releases WHERE live_at <= (SELECT live_at FROM releases "
                            "ORDER BY live_at DESC LIMIT 1 OFFSET ?)", (self.retention,))
        except sqlite3.Error as exc:
            log.error("history: cannot prune %s (%s)", self.path, exc)

    def close(self) -> None:
        self.flush()
        self.db.close()
