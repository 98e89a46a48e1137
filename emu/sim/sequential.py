"""Model code run outside a schedule: one caller, called from plain Python.

A model function is written once, as ``async`` code on the primitives a ``Machine`` hands
out, and runs in schedules. ``Sequential`` hands out the same primitives for a single
caller with nobody to interleave with: a scheduling point completes at once, a free lock
is taken at once, and a lock that is already held (which in a schedule would block until
another actor released it) is an error, since no other actor exists to release it.
``call`` drives one such coroutine to its end without Trio and returns its value, so a
direct API can offer ``pkvm.host_share_hyp(pfn)`` as an ordinary function that returns the
kernel's return code, computed by the very code the hunts run.
"""

from __future__ import annotations

from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar

from ..errors import EmuError

T = TypeVar("T")


class Finding(Exception):
    """What ``Machine.fail`` reports in a schedule (a WARN_ON, a BUG, a broken invariant),
    raised instead when the model runs outside one."""

    def __init__(self, kind: str, message: str, details: str = "") -> None:
        super().__init__(f"{kind}: {message}" + (f"\n{details}" if details else ""))
        self.kind, self.message, self.details = kind, message, details


class _Done:
    """An awaitable that is already complete (a scheduling point with nobody else)."""

    __slots__ = ()

    def __await__(self):
        return iter(())


_DONE = _Done()


class SequentialLock:
    """A mutex or spinlock for the only caller: taking it while held is a self-deadlock."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.held = False

    def trace_label(self) -> str:
        return self.name

    def is_locked(self) -> bool:
        return self.held

    async def lock(self) -> None:
        if self.held:
            raise EmuError(f"{self.name} is taken while already held: with one caller "
                           "nobody can release it (a self-deadlock)")
        self.held = True

    def unlock(self) -> None:
        if not self.held:
            raise EmuError(f"{self.name} is released but was not held")
        self.held = False

    async def __aenter__(self) -> None:
        await self.lock()

    async def __aexit__(self, *exc: object) -> None:
        self.unlock()


class Sequential:
    """The ``Machine`` surface model code uses, for one caller outside any schedule."""

    def __init__(self, quirks: tuple[str, ...] = (), release: str | None = None) -> None:
        self.quirks = quirks
        self.release = release

    def point(self, op: str) -> Awaitable[None]:
        return _DONE

    def yield_point(self, op: str) -> Awaitable[None]:
        return _DONE

    def mutex(self, name: str, lock_class: str | None = None) -> SequentialLock:
        return SequentialLock(name)

    spinlock = mutex

    def quirk(self, name: str) -> bool:
        return name in self.quirks

    def fail(self, kind: str, message: str, details: str = "") -> None:
        raise Finding(kind, message, details)

    def note(self, text: str) -> None:
        """Trace annotations have no trace to go to here."""

    def hot(self, monitor: str, key: object, why: str = "") -> None:
        """No liveness monitors outside a schedule: a call that never returns hangs its
        caller, who sees that."""

    def cold(self, monitor: str, key: object) -> None:
        """(See ``hot``.)"""

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` to its end and return its value. It must never suspend: every
        primitive it awaits comes from this object."""
        try:
            coro.send(None)
        except StopIteration as done:
            return done.value
        coro.close()
        raise EmuError("model code suspended outside a schedule: it awaited something that "
                       "is not a Sequential primitive")
