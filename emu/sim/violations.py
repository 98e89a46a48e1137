"""What a schedule can find.

A *fatal* violation stops the schedule at once (a broken invariant, a deadlock, a
use-after-free). A *warning* is recorded and the schedule goes on, as the kernel goes on
after a lockdep splat: lockdep reports a *possible* deadlock, which the same schedule may
or may not go on to hit.
"""

from __future__ import annotations

import attrs


@attrs.frozen
class Violation:
    kind: str
    """Short machine-readable class: ``invariant``, ``deadlock``, ``lockdep``, ``liveness``,
    ``use-after-free``, ``sleep-in-atomic``, ``exception`` ..."""
    message: str
    """One line, in kernel terms."""
    step: int
    actor: str | None = None
    details: str = ""
    """Further lines: the chain of a lockdep report, the wait-for cycle, a traceback."""
    fatal: bool = True

    def describe(self) -> str:
        head = f"{self.kind}: {self.message}"
        where = f" (step {self.step}" + (f", {self.actor})" if self.actor else ")")
        return head + where + (("\n" + self.details) if self.details else "")

    def to_json(self) -> dict:
        return attrs.asdict(self)


class Stop(BaseException):
    """Raised inside an actor when its schedule has ended; never seen by model code's
    ``except Exception`` handlers, so it unwinds the actor cleanly."""
