"""What a push asks for, and whether we act on it.

The payload is untrusted even when signed (a misconfigured hook can send
anything), so every field is type-checked, and the result is only a *hint*:
the deploy fetches the branch and deploys its real tip.

>>> p = Push.from_payload({"ref": "refs/heads/main", "after": "a" * 40,
...                        "repository": {"full_name": "o/r"}})
>>> wanted(p, branch="main", full_name="O/R")
(True, 'push to main')
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_SHA = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")


class BadPayload(ValueError):
    """The JSON parsed but is not the shape of a push."""


@dataclass(frozen=True)
class Push:
    ref: str
    after: str | None
    deleted: bool
    repository: str | None

    @classmethod
    def from_payload(cls, payload: Any, repo_key: tuple[str, ...] = ("repository", "full_name")) -> "Push":
        if not isinstance(payload, dict):
            raise BadPayload("payload is not a JSON object")
        ref = payload.get("ref")
        if not isinstance(ref, str):
            raise BadPayload("push payload has no string 'ref'")
        after = payload.get("after")
        if not (isinstance(after, str) and _SHA.match(after)):
            after = None
        zero = after is not None and set(after) == {"0"}
        deleted = payload.get("deleted") is True or zero
        node: Any = payload
        for key in repo_key:
            node = node.get(key) if isinstance(node, dict) else None
        repository = node if isinstance(node, str) else None
        return cls(ref=ref, after=None if zero else after, deleted=deleted, repository=repository)


def wanted(push: Push, *, branch: str, full_name: str | None) -> tuple[bool, str]:
    """Return (deploy?, reason) for a push against our filters."""
    if full_name is not None and (push.repository or "").lower() != full_name.lower():
        return False, f"repository {push.repository or '(none)'} is not {full_name}"
    if push.ref.startswith("refs/tags/"):
        return False, f"tag {push.ref[len('refs/tags/'):]} is not deployed"
    if not push.ref.startswith("refs/heads/"):
        return False, f"ref {push.ref} is not a branch"
    name = push.ref[len("refs/heads/"):]
    if name != branch:
        return False, f"branch {name} is not {branch}"
    if push.deleted:
        return False, f"branch {name} was deleted"
    return True, f"push to {name}"
