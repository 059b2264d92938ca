"""Deploys and rollbacks: the work tree moves to a commit, its release takes the road.

A deploy fetches, lets :func:`~supervisor.plan.plan` decide, moves the tree,
makes the commit's release and takes the road with the running release as its
fallback; a rollback to a kept release starts it as it is (no checkout, no
preparation) and the tree follows.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Callable

from .backoff import Backoff
from .built import Built
from .configvars import ConfigVarsError
from .releases.builder import BuildFailed
from .failure import Failure
from .git.tree import Facts, FetchError, GitFailure
from .mailbox import Kind, Mailbox
from .ops.record import LastDeploy, Phases
from .pause import Pause
from .plan import plan
from .road import Attempt
from .work import Result, Work

log = logging.getLogger("supervisor.deploy")

AUTOMATIC = frozenset({"webhook", "poll"})  # triggers a pause holds back


@dataclass(frozen=True)
class RollbackTo:
    """`rollback --to REF`: a kept release's id or a commit; ``force``: even a release that never went live."""

    ref: str
    force: bool = False


@dataclass(frozen=True)
class ConfigChange:
    """`pushcd config set/unset`: applied to the config vars current when its request is taken, so two changes
    queued one after the other both count."""

    set: tuple[tuple[str, str], ...] = ()
    unset: tuple[str, ...] = ()


class Deploys:
    def __init__(self, work: Work, mailbox: Mailbox, pause: Pause, hold: Callable[[str], None], *,
                 on_diverge: str) -> None:
        self.work = work
        self.mailbox = mailbox  # a failed fetch is retried later through it
        self.pause = pause
        self.hold = hold
        self.on_diverge = on_diverge  # replaced on SIGHUP
        self._fetch_backoff = Backoff(first=1.0, cap=60.0)

    async def deploy(self, trigger: str, arg: str | None = None) -> Result:
        """The branch tip; or ``arg``: a commit of the branch's history chosen by hand, or "retry"."""
        w = self.work
        if trigger in AUTOMATIC and self.pause.reason is not None:
            log.info("deploys are paused (%s): %s does not deploy", self.pause.reason, trigger)
            return None
        phases = Phases()
        try:
            with phases("fetch"):
                tip = await w.git.run(w.tree.fetch)
        except FetchError as exc:
            delay = self._fetch_backoff.next()
            self.mailbox.put_later(delay, Kind.DEPLOY, trigger)
            return w.finish("failed", f"{exc}; retrying in {delay:g}s", w.deployed, trigger, phases, w.deployed)
        self._fetch_backoff.failures = 0
        target, pinned = tip, arg not in (None, "retry")
        if arg == "retry":
            w.marks.unmark(tip)  # a person says: try it again (the cause was fixed elsewhere)
        elif pinned:
            try:
                target = await w.git.run(w.tree.commit_on_branch, arg, tip)
            except GitFailure as exc:
                return w.finish("refused", str(exc), w.deployed, trigger, phases, w.deployed)
        facts = await w.git.run(w.tree.facts, target)
        decision = plan(facts, self.on_diverge, w.marks.as_dict(), pinned=pinned)
        if decision.action == "none":
            log.info("nothing to deploy: %s", decision.reason)
            return LastDeploy("none", decision.reason, target, trigger)  # told to who asked; not recorded
        if decision.action == "refuse":
            return w.finish("refused", decision.reason, target, trigger, phases, w.deployed)
        result = await self.go(facts, decision.reason, trigger, phases, backup=decision.action == "reset")
        if w.deployed == target:
            if target != tip:
                self.hold(f"pinned to {target[:12]}")  # so the next push does not undo it
            await self._forget_older_marks(target)
        return result

    async def _forget_older_marks(self, good: str) -> None:
        """Marks of commits older than one that deployed well are moot: forget them, so the list does not only grow."""
        w = self.work
        for sha in w.marks:
            if sha != good and await w.git.run(w.tree.is_ancestor, sha, good):
                w.marks.unmark(sha)

    async def go(self, facts: Facts, reason: str, trigger: str, phases: Phases, backup: bool = False,
                 kind: str = "deploy", config: str | None = None) -> Result:
        """Move the tree to ``facts.target``, make its release, take the road; back if it does not come up.
        ``config``: the config vars it runs with (a rollback's: the ones it ran with; default the current)."""
        w = self.work
        previous, target, fallback = w.deployed, facts.target, w.road.current
        try:
            with phases("checkout"):
                await w.moves.move(facts, backup=backup, reason=reason)
        except GitFailure as exc:
            # The tree was put back to the running commit (all or nothing); the next push tries again.
            return w.finish("failed", f"{exc}; the tree is back at {previous[:12]}", target, trigger, phases,
                            previous, kind=kind)
        undo = w.undo(Built(target, w.tree.path), fallback or Built(previous, w.tree.path))
        try:
            built = w.new_release(await w.road.builder.of_commit(target, phases, fallback), config)
        except BuildFailed as exc:
            why: Failure | None = Failure(str(exc))
            await undo(why)
        else:
            why = await w.road.go(Attempt(kind, built, fallback, probation=kind == "deploy"), phases, undo)
        if why is None:
            w.config_vars.make_current(built.config)  # a rollback brings its config vars back
            return w.finish("ok", f"{reason} in {phases.total():.2f}s", target, trigger, phases, previous, kind=kind)
        head = await w.git.run(w.tree.head)
        stuck = "" if head == previous else f" (the work tree could not follow and stays at {head[:12]}: see the log)"
        return w.finish("failed", f"{target[:12]} rolled back to {previous[:12]}{stuck}: {why}", target, trigger,
                        phases, previous, failure=why, kind=kind)

    async def rollback(self, trigger: str, to: RollbackTo | None = None) -> Result:
        """Back to the newest good release that is not the running one (or to ``to``: a kept release's id or
        commit; one that never went live only with ``force``), with the config vars it ran with."""
        w, phases = self.work, Phases()
        current, builder, running = w.deployed, w.road.builder, w.road.current
        arg = to.ref if to else None
        kept = builder.kept(arg) if arg else None
        found = ((kept.commit, w.road.config_of(kept.commit)) if kept else self._good_release(arg) if arg
                 else w.road.rollback_target())
        if found is None:
            why = (f"{arg}: no kept release or earlier good release has that id or commit (`pushcd releases` "
                   f"lists them)" if arg else "no earlier good release to roll back to")
            return w.finish("refused", why, current, trigger, phases, current, kind="rollback")
        target, config = found
        if not w.config_vars.knows(config):
            return w.finish("refused", f"{target[:12]} ran with config vars {config}, which are no longer kept; "
                                       f"deploy it with `pushcd deploy --commit {target[:12]}` (current config "
                                       f"vars) instead", target, trigger, phases, current, kind="rollback")
        kept = kept or builder.kept(target)
        kept = dataclasses.replace(kept, config=config) if kept is not None else None
        if target == current and (kept is None or kept == running) and config == (running.config if running else ""):
            return w.finish("refused", f"{target[:12]} is the running release already", current, trigger, phases,
                            current, kind="rollback")
        if kept is not None and builder.never_live(kept) and not (to and to.force):
            why = w.marks.why(kept.commit) or "it failed its preparation or its gates"
            return w.finish("refused", f"release {kept.id} ({kept.commit[:12]}) never went live ({why}); "
                                       f"`pushcd rollback --to {arg} --force` starts it anyway", kept.commit, trigger,
                            phases, current, kind="rollback")
        if kept is not None:
            return await self._to_kept(kept, trigger, phases)
        facts = await w.git.run(w.tree.facts, target)
        if facts.blocking:
            return w.finish("refused", "local edits would be overwritten: " + ", ".join(facts.blocking), target,
                            trigger, phases, current, kind="rollback")
        # Until a newer commit arrives, the webhook must not bring the rolled-back one back.
        if target != current:
            w.marks.mark(current, "rolled back by hand")
        result = await self.go(facts, f"roll back {current[:12]} to {target[:12]}", trigger, phases, kind="rollback",
                               config=config)
        if w.deployed != target:
            w.marks.unmark(current)  # the rollback itself failed: current still runs (and is not bad)
        return result

    def _good_release(self, ref: str) -> tuple[str, str] | None:
        """A good release (commit, config vars) from a commit's abbreviation (7 digits or more)."""
        if len(ref) < 7:
            return None
        return next((r for r in self.work.road.good_releases() if r[0].startswith(ref)), None)

    async def _to_kept(self, kept: Built, trigger: str, phases: Phases) -> Result:
        """Start a kept release as it is (no checkout, no preparation), then bring the work tree back to it."""
        w = self.work
        current = w.deployed
        if kept.commit != current:
            w.marks.mark(current, "rolled back by hand")  # the webhook must not bring it back
        why = await w.road.go(Attempt("rollback", kept, w.road.current, prepare=False), phases)
        if why is not None:
            w.marks.unmark(current)
            return w.finish("failed", f"rollback to release {kept.id} ({kept.commit[:12]}) failed, {current[:12]} "
                                      f"keeps serving: {why}", kept.commit, trigger, phases, current, failure=why,
                            kind="rollback")
        await w.moves.follow(kept.commit, phases)
        w.config_vars.make_current(kept.config)
        return w.finish("ok", f"roll back {current[:12]} to {kept.commit[:12]} (kept release {kept.id}) in "
                              f"{phases.total():.2f}s", kept.commit, trigger, phases, current, kind="rollback")

    async def configure(self, trigger: str, change: ConfigChange) -> Result:
        """New config vars: the running release again with them, through every gate and probation, as a
        deploy; new releases take them once they serve."""
        w, phases = self.work, Phases()
        try:
            config = w.config_vars.add(w.config_vars.changed(dict(change.set), change.unset))
        except ConfigVarsError as exc:
            return w.finish("refused", str(exc), w.deployed, trigger, phases, w.deployed, kind="config")
        running = w.road.current
        if running is None:  # nothing serves yet: the next start takes them
            w.config_vars.make_current(config)
            return None
        if running.config == config:
            w.config_vars.make_current(config)
            return LastDeploy("none", "the running release has these config vars already", running.commit, trigger)
        target = dataclasses.replace(running, config=config)
        why = await w.road.go(Attempt("config", target, running, probation=True), phases)
        name = config or "(none)"
        if why is not None:
            return w.finish("failed", f"config vars {name} did not come up; {running.config or '(none)'} keep "
                                      f"serving: {why}", running.commit, trigger, phases, running.commit,
                            failure=why, kind="config")
        w.config_vars.make_current(config)
        return w.finish("ok", f"config vars {name} live in {phases.total():.2f}s (were {running.config or '(none)'})",
                        running.commit, trigger, phases, running.commit, kind="config")
