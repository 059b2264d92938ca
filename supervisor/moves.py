"""The work tree follows the releases: forward to a deploy's commit, back when an attempt failed, to a
kept release after it went live. The watcher never takes our own writes for a hand edit."""

from __future__ import annotations

import logging

from .git.thread import GitThread
from .git.tree import Facts, GitFailure, WorkTree
from .ops.record import Phases
from .watch import Expected

log = logging.getLogger("supervisor.deploy")


class Moves:
    def __init__(self, tree: WorkTree, git: GitThread, expected: Expected) -> None:
        self.tree = tree
        self.git = git
        self.expected = expected

    async def move(self, facts: Facts, backup: bool, reason: str) -> None:
        """All or nothing to ``facts.target``; GitFailure says why, with the tree back where it was."""
        def work() -> None:
            if backup:
                ref = self.tree.backup(facts.head)
                log.warning("saved %s as %s before reset", facts.head[:12], ref)
            self.tree.move_to(facts.target, reason, facts)

        # The checkout's own writes (and a repair's) must not come back as a watched change.
        self.expected.expect(facts.writes)
        with self.expected.writing():  # the watcher judges nothing until this block ends
            try:
                await self.git.run(work)
            except GitFailure:
                self.expected.expect(facts.undo)  # the repair wrote the running commit's files back
                raise

    async def follow(self, commit: str, phases: Phases) -> None:
        """The tree to ``commit``, the release that serves or is about to; local edits that would be
        overwritten keep it where it is (said in the log): a release never runs from them."""
        with phases("rollback"):
            facts = await self.git.run(self.tree.facts, commit)
            if facts.head == commit:
                return
            if facts.blocking:
                log.warning("the work tree stays at %s: local edits would be overwritten (%s)", facts.head[:12],
                            ", ".join(facts.blocking))
                return
            try:
                await self.move(facts, backup=False, reason=f"roll back to {commit[:12]}")
            except GitFailure as exc:
                log.warning("the work tree stays at %s: %s", facts.head[:12], exc)
