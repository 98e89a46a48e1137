"""What a schedule can find.

A *fatal* violation stops the schedule at once (a broken invariant, a deadlock, a
use-after-free). A *warning* is recorded and the schedule goes on, as the kernel goes on
after a lockdep splat: lockdep reports a *possible* deadlock, which the same schedule may
or may not go on to hit.

A check that knows which shared objects its violation is about passes their stable access
names (``accesses``) with the message, as an ``About`` (a ``str``, so every ``fail`` and
every invariant's ``str | None`` carries it unchanged): ``explain`` then takes the deciding
pair on those objects instead of reading them out of the message. They are not part of
the trace, so a trace hash does not depend on them.
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
    objects: tuple[str, ...] = ()
    """The stable names of the objects the violation is about, when the check knows them
    (``About``); empty otherwise."""
    at: int | None = None
    """The step at which the cause was decided, when the check reports later (a return
    code checked by its caller): the deciding pair lies before it."""

    def describe(self) -> str:
        head = f"{self.kind}: {self.message}"
        where = f" (step {self.step}" + (f", {self.actor})" if self.actor else ")")
        return head + where + (("\n" + self.details) if self.details else "")

    def to_json(self) -> dict:
        """Every field; ``objects`` only when known (files written before it stay valid)."""
        data = attrs.asdict(self)
        if not self.objects:
            del data["objects"]
        else:
            data["objects"] = list(self.objects)
        if self.at is None:
            del data["at"]
        return data


class About(str):
    """A violation message with the stable names of the objects it is about:
    ``m.fail("use-after-free", About(text, "memslots:1"))``, or an invariant returning
    ``About(text, name)``. It is its text everywhere a ``str`` is expected. ``at``: the step
    at which the cause was decided, when the violation is reported later."""

    objects: tuple[str, ...]
    at: int | None

    def __new__(cls, text: str, *objects: str, at: int | None = None) -> About:
        self = super().__new__(cls, text)
        self.objects = objects
        self.at = at
        return self


def objects_of(message: str) -> tuple[str, ...]:
    """The objects ``message`` is about (``About``), () for a plain ``str``."""
    return message.objects if isinstance(message, About) else ()


def prefixed(head: str, message: str) -> About:
    """``head + message``, about what ``message`` is about: a check that wraps another's
    message ("pkvm stale tlbs: ...") keeps its objects."""
    return About(head + message, *objects_of(message), at=getattr(message, "at", None))


class Stop(BaseException):
    """Raised inside an actor when its schedule has ended; never seen by model code's
    ``except Exception`` handlers, so it unwinds the actor cleanly."""
