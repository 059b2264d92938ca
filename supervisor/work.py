"""What every request handler works with: the work tree, the road, the marks, and where results are written.

The handlers (:mod:`.startup`, :mod:`.deploys`, :mod:`.restarts`, :mod:`.recovery`) each choose a target
and a fallback for one kind of request and take the road; this is the little they share.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .built import Built
from .configvars import ConfigVars
from .failure import Failure
from .git.thread import GitThread
from .git.tree import WorkTree
from .marks import Marks
from .moves import Moves
from .ops.record import LastDeploy, Phases, Recorder
from .road import Road, Undo

Result = LastDeploy | None  # what a request's waiters hear: the recorded result, or None (nothing done)


@dataclass
class Work:
    tree: WorkTree
    git: GitThread
    road: Road
    moves: Moves
    recorder: Recorder
    marks: Marks  # commits not to deploy again; the road reads them too
    head: str = ""  # the work tree's HEAD at start-up, until a release serves
    config_vars: ConfigVars = field(default_factory=lambda: ConfigVars(None))

    def new_release(self, built: Built, config: str | None = None) -> Built:
        """A release made just now runs with ``config`` (a rollback's: those it ran with), by default the current
        config vars (a kept one keeps its own)."""
        return dataclasses.replace(built, config=self.config_vars.current if config is None else config)

    @property
    def deployed(self) -> str:
        """The commit of the release that serves (or, crashed, is to be started again)."""
        return self.road.current.commit if self.road.current else self.head

    def finish(self, result: str, reason: str, commit: str, trigger: str, phases: Phases,
               from_commit: str, failure: Failure | None = None, kind: str = "deploy") -> LastDeploy:
        config = self.road.current.config if self.road.current else ""
        return self.recorder.finish(result, reason, commit, trigger, phases, from_commit, failure, kind, config)

    def undo(self, target: Built, fallback: Built | None) -> Undo:
        """After a failed attempt: the target is marked bad (unless it holds hand edits), the tree goes back."""
        async def undo(why: Failure) -> None:
            if fallback is None or fallback.commit == target.commit:
                return
            if not target.dirty:
                self.marks.mark(target.commit, str(why))
            await self.moves.follow(fallback.commit, Phases())
        return undo
