"""Which way to move the work tree to a target commit, or why not: a pure decision."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Mapping

from .git.tree import Facts

Action = Literal["none", "forward", "back", "reset", "refuse"]


@dataclass(frozen=True)
class Plan:
    action: Action
    reason: str


def plan(facts: Facts, on_diverge: str, bad: Mapping[str, str], pinned: bool = False) -> Plan:
    """Decide how to bring the work tree to the remote tip (or, ``pinned``, to a commit a person chose)."""
    if facts.head == facts.target:
        return Plan("none", f"already at {facts.target[:12]}")
    if facts.target in bad and not pinned:
        return Plan("none", f"{facts.target[:12]} is marked bad ({bad[facts.target]}); waiting for a newer commit "
                            f"(pushcd deploy --retry deploys it anyway)")
    if facts.target_is_ancestor and pinned and not facts.blocking:
        return Plan("back", f"back to {facts.target[:12]} (chosen by hand)")
    if facts.target_is_ancestor:
        # The remote is behind us (local commits, never pushed): moving back would lose them.
        return Plan("refuse", f"diverged: local {facts.head[:12]} is ahead of remote {facts.target[:12]}; "
                              f"push the local commits or set on_diverge = \"reset\"")
    if facts.blocking:
        return Plan("refuse", "local edits would be overwritten: " + ", ".join(facts.blocking)
                    + "; commit, stash or revert them")
    if facts.head_is_ancestor:
        return Plan("forward", f"fast-forward {facts.head[:12]}..{facts.target[:12]}")
    if on_diverge == "reset":
        return Plan("reset", f"diverged: reset {facts.head[:12]} to {facts.target[:12]} (on_diverge = reset)")
    return Plan("refuse", f"diverged: local {facts.head[:12]} and remote {facts.target[:12]} have split "
                          f"(force-push or local commits); fix by hand or set on_diverge = \"reset\"")
