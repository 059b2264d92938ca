"""Commits marked bad: a deploy of one is not retried until a newer commit arrives (or a person says so).

Kept in memory for the decisions and in the history so a restart of pushcd keeps them.

>>> marks = Marks()
>>> marks.mark("a" * 40, "crashed")
>>> "a" * 40 in marks, marks.why("a" * 40)
(True, 'crashed')
>>> marks.unmark("a" * 40); "a" * 40 in marks
False
"""

from __future__ import annotations

from typing import Iterator

from .ops.history import History


class Marks:
    def __init__(self, history: History | None = None, marks: dict[str, str] | None = None) -> None:
        self.history = history
        self._marks: dict[str, str] = dict(marks or {})

    def __contains__(self, sha: object) -> bool:
        return sha in self._marks

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._marks))

    def why(self, sha: str) -> str:
        return self._marks.get(sha, "")

    def as_dict(self) -> dict[str, str]:
        return dict(self._marks)

    def mark(self, sha: str, reason: str) -> None:
        self._marks[sha] = reason
        if self.history:
            self.history.mark_bad(sha, reason)

    def unmark(self, sha: str) -> None:
        if self._marks.pop(sha, None) is not None and self.history:
            self.history.unmark_bad(sha)
