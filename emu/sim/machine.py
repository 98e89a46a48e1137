"""The machine a scenario builds: actors, the primitives they share, and the checks.

A scenario function receives a fresh ``Machine`` for every schedule, spawns actors on it
(``async def`` functions), creates the primitives they synchronise through, and registers
invariants. Model code never touches Trio directly: everything comes from here.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Hashable, Iterable
from typing import Any

from . import coverage
from .channel import Channel, Completion
from .controller import CLOCK, Actor, Check, Controller
from .liveness import Monitors
from .locks import SRCU, Mutex, RWSem, SpinLock
from .shared import KObject, SharedVar

VERIFY_KEYS = False
"""Recompute the checks a key lets ``Machine.invariant`` skip, and report a key that missed
a change (the test suite's safety net for keyed invariants)."""


_NEVER = object()


class KeyedCheck:
    """A check skipped while its key is the one it last passed with."""

    def __init__(self, check: Check, key: Callable[[], Hashable]) -> None:
        self.check, self.key = check, key
        self.passed: Hashable = _NEVER

    def __call__(self) -> str | None:
        key = self.key()
        if key == self.passed:
            if VERIFY_KEYS:
                missed = self.check()
                if missed is not None:
                    return f"{missed} (its key {key!r} did not change: the key misses a change)"
            return None
        message = self.check()
        self.passed = key if message is None else _NEVER
        return message


class Machine:
    def __init__(self, ctl: Controller, params: dict[str, Any], quirks: tuple[str, ...],
                 known_quirks: tuple[str, ...], seed: int, release: str | None = None) -> None:
        self.ctl = ctl
        self.params = params
        self.quirks = quirks
        self.release = release
        """The version of the modelled system to behave as (``--kernel``), an opaque name to
        the engine; None: the model's default."""
        self._known_quirks = known_quirks
        self._seed = seed
        self._random: random.Random | None = None
        self.views: dict[str, Callable[[], str]] = {}
        """The end-of-run views the model offers (``view``), by name."""
        self.coverage: coverage.Recorder = coverage.OFF
        """The schedule's coverage recorder (``sim.coverage``): off unless a hunt asks."""

    @property
    def random(self) -> random.Random:
        """Seeded randomness for the scenario's own choices (never for scheduling); made
        when first used (seeding it costs as much as a few scheduling decisions, and most
        scenarios draw nothing)."""
        if self._random is None:
            self._random = random.Random(f"emu-data-{self._seed}")
        return self._random

    # actors and primitives
    def spawn(self, name: str, fn: Callable[..., Awaitable[None]], *args: Any,
              group: str = "actors", daemon: bool = False) -> Actor:
        return self.ctl.spawn(name, fn, *args, group=group, daemon=daemon)

    def mutex(self, name: str, lock_class: str | None = None) -> Mutex:
        return Mutex(self.ctl, name, lock_class)

    def spinlock(self, name: str, lock_class: str | None = None) -> SpinLock:
        return SpinLock(self.ctl, name, lock_class)

    def rwsem(self, name: str, lock_class: str | None = None) -> RWSem:
        return RWSem(self.ctl, name, lock_class)

    def srcu(self, name: str, lock_class: str | None = None) -> SRCU:
        return SRCU(self.ctl, name, lock_class)

    def channel(self, name: str, capacity: int = 1) -> Channel:
        return Channel(self.ctl, name, capacity)

    def completion(self, name: str) -> Completion:
        return Completion(self.ctl, name)

    def shared(self, name: str, value: Any = None) -> SharedVar:
        return SharedVar(self.ctl, name, value)

    def kobject(self, name: str) -> KObject:
        return KObject(self.ctl, name)

    # scheduling points and time (each returns the controller's own awaitable: no coroutine
    # of its own to create and to pass every resumption through)
    def point(self, op: str) -> Awaitable[None]:
        """A bare scheduling point before ``op`` (an access the model wants interleaved)."""
        return self.ctl.point(op)

    def yield_point(self, op: str) -> Awaitable[None]:
        """A retry point before ``op``: the model's ``cond_resched()``, ``cpu_relax()``, or
        one more turn of a retry loop (``while (rc := await f()) == -EBUSY: await
        m.yield_point("retry f")``). A scheduling point like ``point``, and a yield: PCT
        drops the actor below every other, so a spinning actor cannot starve the one it
        waits for."""
        return self.ctl.yield_point(op)

    def sleep(self, dt: int) -> Awaitable[None]:
        """Sleep ``dt`` ns of virtual time; firing the timer is one of the strategy's
        choices (it can come while other actors could still run)."""
        return self.ctl.sleep(dt)

    @property
    def now(self) -> int:
        self.ctl.touch(CLOCK)  # reading virtual time is an access (a timer step writes it)
        return self.ctl.now

    def touch(self, name: str, write: bool = False) -> None:
        """The current step reads (``write`` false) or writes the shared object ``name``, a
        stable name such as ``gfn:1:0x5`` (see ``sim.accesses``): what the access relation
        of partial-order reduction, shrinking and explanations is made of. Nothing when the
        run does not record accesses."""
        self.ctl.touch(name, write)

    # checks and findings
    def invariant(self, name: str, check: Check, *,
                  key: Callable[[], Hashable] | None = None) -> None:
        """``check()`` runs before every decision; it returns None, or what is wrong.

        ``key()``, if given, is a cheap fingerprint of everything ``check`` reads (version
        counters of the state it walks): while it equals the fingerprint of the last passing
        check, nothing it reads has changed and the check is skipped. A key that misses a
        change hides violations, so tests run with ``VERIFY_KEYS`` on, which recomputes
        every skipped check and fails if it would not have passed."""
        self.ctl.invariants.append((name, check if key is None else KeyedCheck(check, key)))

    def final(self, name: str, check: Check) -> None:
        """``check()`` runs once, after every actor has finished."""
        self.ctl.finals.append((name, check))

    def hot(self, monitor: str, key: Hashable, why: str = "") -> None:
        """A liveness monitor (``sim.liveness``): the situation ``key`` of ``monitor`` has
        begun and must end (``cold``) before the schedule does; one still hot when every
        actor has finished, or when the step budget runs out, is a ``liveness`` violation
        naming where (step, actor) and ``why`` it went hot. Not a scheduling point, not in
        the trace."""
        if not self.ctl.stopped:
            self._monitors().hot(monitor, key, why)

    def cold(self, monitor: str, key: Hashable) -> None:
        """The situation ``key`` of ``monitor`` has ended (nothing if it is not hot)."""
        if self.ctl.monitors is not None:
            self.ctl.monitors.cold(monitor, key)

    def state_fingerprint(self, fingerprint: Callable[[], Hashable]) -> None:
        """Offer a cheap, hashable fingerprint of the model's state (versions, small
        tuples; it must change nothing): taken at every decision of the fair continuation
        only, it tells a livelock (the same few states again and again) from progress the
        step budget cut short (``sim.liveness``)."""
        self._monitors().fingerprint = fingerprint

    def _monitors(self) -> Monitors:
        """The schedule's monitors, made when first needed (``Controller.monitors``)."""
        if self.ctl.monitors is None:
            self.ctl.monitors = Monitors(self.ctl)
        return self.ctl.monitors

    def view(self, name: str, show: Callable[[], str]) -> None:
        """Offer ``show()`` as the view ``name``: text about the machine's state at the end
        of the run (``RunResult.views``, ``emu run --view NAME``). It is called after the
        schedule has ended, a violation included, so it reads state as it is and must not
        await."""
        if name in self.views:
            raise ValueError(f"two views named {name!r}")
        self.views[name] = show

    # coverage (``sim.coverage``): written, never read, while the schedule runs
    def cover(self, kind: str, key: str) -> None:
        """This schedule covered the item ``(kind, key)`` (nothing when coverage is off)."""
        self.coverage.cover(kind, key)

    def declare(self, kind: str, keys: Iterable[str], reason: str = "") -> None:
        """The items ``(kind, key)`` this scenario can cover; ``reason``: why one may stay
        unreached (an N/A cell)."""
        self.coverage.declare(kind, keys, reason)

    def goal(self, name: str, about: str, *stages: tuple[str, tuple[str, str]]) -> None:
        """A "sometimes" goal: a situation some schedule of the hunt must reach, as ordered
        ``(what it means, item)`` stages; ``emu hunt --require-coverage`` fails a hunt
        that never covered every stage, and reports the best partial progress."""
        if self.coverage.on:
            self.coverage.goal(coverage.Goal(name, about, tuple(
                coverage.Stage(text, item) for text, item in stages)))

    def racing(self, key: str, *functions: str, **match: Any) -> None:
        """Cover ``("race", key)`` if another actor is inside ``functions`` (model function
        names on its stack, outermost first), the innermost with the local values
        ``match``: the current step overlaps that call (a stack walk, coverage only)."""
        if self.coverage.on and coverage.inside(self.ctl, functions, match):
            self.coverage.cover(coverage.RACE, key)

    def fail(self, kind: str, message: str, details: str = "") -> None:
        self.ctl.fail(kind, message, details=details)

    def quirk(self, name: str) -> bool:
        if name not in self._known_quirks:
            raise ValueError(f"quirk {name!r} is not declared by this scenario")
        return name in self.quirks

    # trace annotations
    def counter(self, name: str, value: int | float) -> None:
        self.ctl.annotate("counter", name, value)

    def note(self, text: str) -> None:
        self.ctl.annotate("note", text)

    def describe_received(self, describe: Callable[..., str], *args: Any) -> None:
        """Name the message the current actor has just received, in the model's terms
        (``describe(*args)``: ``UV_PAGE_IN(lpid=1, gfn=0x5)`` where its label says only
        ``UV_PAGE_IN``), for the timeline of a detailed re-run; otherwise nothing is
        computed or recorded, and the trace (and its hash) is the same either way."""
        if self.ctl.detail:
            self.ctl.trace.received[self.ctl.step] = describe(*args)
