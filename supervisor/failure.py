"""Why something did not come up, as a value: what happened, the most telling line of its output, its last
lines. ``str()`` of it is the report people read (logs, ``/status``, history); the failing line travels
as a field to notifications and the page, never parsed back out of the text.

>>> from types import SimpleNamespace
>>> failure = Failure.of("exited with status 3", SimpleNamespace(telling="SyntaxError: bad", tail=["x", "y"]))
>>> str(failure), failure.failing_line
('SyntaxError: bad (exited with status 3); last output: x | y', 'SyntaxError: bad')
>>> str(Failure("timed out", where="worker[0] of abc"))
'worker[0] of abc: timed out'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Protocol


class Output(Protocol):
    """A process's output as a child keeps it."""

    telling: str | None
    tail: Iterable[str]


@dataclass(frozen=True)
class Failure:
    what: str  # what happened: "exited with status 3 before it was ready", "release task ... timed out"
    failing_line: str | None = None  # the line of its output a person wants first (an exception's)
    output_tail: tuple[str, ...] = ()  # its last lines
    where: str = ""  # which instance, when it matters ("worker[0] of 1a2b3c")

    @classmethod
    def of(cls, what: str, output: Output, where: str = "") -> "Failure":
        return cls(what, output.telling, tuple(output.tail)[-5:], where)

    def __str__(self) -> str:
        head = f"{self.failing_line} ({self.what})" if self.failing_line else self.what
        tail = " | ".join(self.output_tail[-5:])
        report = f"{head}; last output: {tail}" if tail else head
        return f"{self.where}: {report}" if self.where else report
