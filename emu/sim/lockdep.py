"""Lock-order checking in the manner of the kernel's lockdep.

Locks belong to *classes* (all ``uvmem_lock`` mutexes of all VMs are one class). Whenever an
actor acquires class B while holding class A, the dependency A -> B is recorded with where
it was first seen. If B already (transitively) depends on A, the two orders together can
deadlock: that is reported as a *possible circular locking dependency*, whether or not this
schedule goes on to deadlock. As in the kernel, the check runs when the acquisition is
*attempted* (before it can block), and lockdep reports once per schedule, then turns itself
off.

Read acquisitions that never block (SRCU read-side sections) add no dependency *into* their
class, but the dependencies taken *inside* a read section do count: an updater that calls
``synchronize`` while holding a lock that readers take inside the section is reported.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from .controller import Actor, Controller


_NONE: MappingProxyType[str, Any] = MappingProxyType({})
"""The dependencies of a class that has none yet (no empty dict made per lookup)."""


@attrs.frozen
class Held:
    """One entry of an actor's held-lock stack."""

    lock: Any
    read: bool
    step: int
    tag: Any = None
    """What the acquisition returned (the SRCU index)."""


@attrs.frozen
class Dependency:
    """``before`` was held when ``after`` was acquired: first seen by ``actor`` attempting
    it after ``step``."""

    before: str
    after: str
    actor: str
    step: int

    def describe(self) -> str:
        return (f"{self.before} -> {self.after}: {self.actor} acquires {self.after} while "
                f"holding {self.before} (after step {self.step})")


class Lockdep:
    def __init__(self, ctl: Controller) -> None:
        self.ctl = ctl
        self.graph: dict[str, dict[str, Dependency]] = {}
        self.active = True

    def acquire(self, actor: Actor, lock: Any, *, read: bool = False) -> None:
        """Check the acquisition of ``lock`` by ``actor`` against every lock it holds."""
        if not self.active:
            return
        new = lock.lock_class
        step = self.ctl.step
        for held in actor.held:
            old = held.lock.lock_class
            if old == new:
                if not (read and held.read):
                    self._report(f"possible recursive locking detected: {actor.name} is trying "
                                 f"to acquire {lock.name} but already holds {held.lock.name}")
                    return
                continue
            if read or new in self.graph.get(old, _NONE):
                continue
            chain = self._path(new, old)
            dependency = Dependency(old, new, actor.name, step)
            if chain is not None:
                self._report_cycle(actor, lock, held, chain, dependency)
                return
            self.graph.setdefault(old, {})[new] = dependency

    def _path(self, src: str, dst: str) -> list[Dependency] | None:
        """The recorded dependency chain src -> ... -> dst (breadth first), if any."""
        parents: dict[str, Dependency | None] = {src: None}
        frontier = [src]
        while frontier:
            following = []
            for node in frontier:
                for nxt, dep in self.graph.get(node, _NONE).items():
                    if nxt in parents:
                        continue
                    parents[nxt] = dep
                    if nxt == dst:
                        chain = []
                        while (d := parents[nxt]) is not None:
                            chain.append(d)
                            nxt = d.before
                        return chain[::-1]
                    following.append(nxt)
            frontier = following
        return None

    def _report_cycle(self, actor: Actor, lock: Any, held: Held, chain: list[Dependency],
                      new: Dependency) -> None:
        first = chain[0]
        message = (f"possible circular locking dependency detected: {actor.name} is trying to "
                   f"acquire {lock.name} while holding {held.lock.name}, but "
                   f"{' -> '.join([d.before for d in chain] + [chain[-1].after])} was seen before")
        lines = ["the existing dependency chain:"]
        lines += [f"  {d.describe()}" for d in chain]
        lines += ["the new dependency:", f"  {new.describe()}"]
        if len(chain) == 1:
            lines += _unsafe_scenario(first.actor, actor.name, first.before, first.after)
        self._report(message, "\n".join(lines))

    def _report(self, message: str, details: str = "") -> None:
        self.active = False
        self.ctl.fail("lockdep", message, details=details, fatal=False)


def _unsafe_scenario(cpu0: str, cpu1: str, a: str, b: str) -> list[str]:
    """Lockdep's two-CPU table for an AB-BA inversion."""
    w = max(len(cpu0), len(a) + 6, 12) + 4
    rows = [(cpu0, cpu1), ("----", "----"), (f"lock({a});", ""), ("", f"lock({b});"),
            ("", f"lock({a});"), (f"lock({b});", "")]
    out = ["possible unsafe locking scenario:"]
    out += [f"  {left:<{w}}{right}".rstrip() for left, right in rows]
    out.append("  *** DEADLOCK ***")
    return out
