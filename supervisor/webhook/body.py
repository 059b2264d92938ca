"""A delivery's body, received without trusting it: hashed as it streams, held in a bounded spool.

Anyone who can reach the webhook port can send a body; only a signed one may cost memory. So the
body is read in chunks, each fed to the HMACs a signature may use and written to a spool that keeps
:data:`SPOOL_MEMORY` bytes in memory and the rest in a temporary file; the signature is checked
from the digests (:class:`~supervisor.webhook.delivery.Streamed`), and only a genuine delivery's
body is read back whole. All unverified bytes in flight, in memory or spooled, share one
:class:`Budget`: a flood of large unsigned bodies is refused (503) instead of filling memory or disk.

>>> budget = Budget(10)
>>> budget.take(6), budget.take(6), budget.in_flight
(True, False, 6)
>>> budget.give(6); budget.in_flight
0
"""

from __future__ import annotations

import hmac
import tempfile
from dataclasses import dataclass
from typing import AsyncIterator, Iterable

from .delivery import Streamed

SPOOL_MEMORY = 256 * 1024  # bytes of one unverified body kept in memory; the rest waits in a temporary file
CHUNK = 64 * 1024
UNVERIFIED_BUDGET = 64 * 1024 * 1024  # unverified bytes in flight, all connections together


class Budget:
    """Unverified bytes in flight; one per listener, shared by its receivers."""

    def __init__(self, limit: int = UNVERIFIED_BUDGET) -> None:
        self.limit = limit
        self.in_flight = 0

    def take(self, n: int) -> bool:
        if self.in_flight + n > self.limit:
            return False
        self.in_flight += n
        return True

    def give(self, n: int) -> None:
        self.in_flight -= n


class TooLarge(Exception):
    pass


class OverBudget(Exception):
    pass


@dataclass
class Received:
    """A body received in full: its digests, and the spool that holds it until it is read or dropped."""

    streamed: Streamed
    spool: "tempfile.SpooledTemporaryFile[bytes]"
    size: int

    def read(self) -> bytes:
        """The whole body: for a genuine delivery only."""
        self.spool.seek(0)
        return self.spool.read()

    def close(self) -> None:
        self.spool.close()  # its temporary file, if it had one, goes with it


async def receive(chunks: AsyncIterator[bytes], secret: bytes, algorithms: Iterable[str], budget: Budget,
                  limit: int) -> Received:
    """Read ``chunks`` to the end, hashing and spooling; TooLarge past ``limit`` bytes, OverBudget when the
    unverified bytes of every connection together would pass the budget. What it took, it gives back."""
    macs = {algo: hmac.new(secret, digestmod=algo) for algo in algorithms}
    spool: tempfile.SpooledTemporaryFile[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)
    size = 0
    try:
        async for chunk in chunks:
            size += len(chunk)
            if size > limit:
                raise TooLarge(f"body over {limit} bytes")
            if not budget.take(len(chunk)):
                size -= len(chunk)
                raise OverBudget("too many unverified bytes in flight")
            for mac in macs.values():
                mac.update(chunk)
            spool.write(chunk)
    except BaseException:
        spool.close()
        raise
    finally:
        budget.give(size)
    return Received(Streamed({algo: mac.hexdigest() for algo, mac in macs.items()}), spool, size)
