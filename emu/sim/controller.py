"""The controller: at most one runnable actor, and every scheduling decision is the strategy's.

Actors are Trio tasks. Baton passing keeps at most one of them runnable. An actor that
reaches a scheduling point (``await ctl.point(...)``, or any model primitive) announces the
operation it is about to perform and the predicate under which it can perform it, then asks
the strategy which *enabled* actor takes the next step. If the strategy picks the same actor,
it simply goes on (no task switch); otherwise it reschedules the chosen task and parks
itself. The decision is recorded as ``(step, actor, operation)``.

Blocking is a predicate ("disabled until the mutex is free"), evaluated at each decision,
so deadlock detection is exact: live actors exist, none is enabled, no timer is pending.

**Virtual time** belongs to the controller. ``sleep(dt)`` queues a timer. Whenever timers
are pending and some actor is enabled, firing the earliest timer is one more candidate the
strategy chooses among: a pseudo-actor named ``timer`` (``TIMER``) whose operation is
``fire timer at T``. Choosing it is a step like any other: recorded as ``(step, "timer",
"fire timer at T")``, replayed by name and operation, counted against the step budget; it
advances ``now`` to T and wakes every sleeper due by then. So a timed page copy can finish
while other actors could still run: costs order the timers among themselves, they never
remove a schedule. When *no* actor is enabled and timers are pending, firing is forced and
is not a decision (nothing is recorded, exactly as before timers were choices, so a replay
file without ``timer`` decisions replays wherever no timer choice arises).

Whether the timer is a candidate is the strategy's (its spec's ``"timers": true``, which
``emu`` sets by default; ``Replay`` always offers it, so a file with ``timer`` decisions
replays whatever the setting), and it is always one in the fair suffix (below). Without it
time advances only when nobody can run (the old rule, ``--no-timer-choices``), which a
replay file of either kind follows.

**Retry points.** ``yield_point(op)`` (``Machine.yield_point``) is a scheduling point for
``cond_resched()``, ``cpu_relax()`` and a retry loop: it tells the strategy that the actor
yields (``ctl.yielder``). PCT then drops the actor below every other (Coyote and Shuttle do
the same for a yield), so a spinning actor cannot starve the actor it waits for; random
walk is fair anyway and ignores it.

**Accesses.** With recording on (``record``, or a strategy's ``wants_accesses``), each
decision closes the step in progress: what the chosen actor read and wrote from the decision
that picked it to its next scheduling point (``touch``, and every primitive reports itself),
kept outside the trace and its hash in ``step_accesses`` (see ``accesses``). A timer step
writes ``clock``; so does a sleep that queues a timer, and the step after it reads it.

**Liveness** is reported only when progress is impossible under a fair continuation. The
step budget ``max_steps`` has two halves: the strategy's own schedule runs until
``max_steps - max_steps // 2`` steps; from there on the controller sets ``fair`` and the
schedule continues fairly for the rest of the budget (PCT then picks uniformly among the
enabled actors and the timer, from its own seeded RNG; random walk is uniform already;
replay follows the file), with timers always a candidate. Only if the schedule still has
not finished at ``max_steps`` is "no progress in N steps" reported, naming the actors that
kept stepping during the fair suffix and what every actor was doing; with the monitors
still hot (why it could not finish) and the repeating cycle of each looping actor
(``liveness``). A monitor still hot when every actor has finished is reported there too.
The total never exceeds the budget, so a replay file still holds at most ``max_steps``
decisions and the memory estimate per step still bounds a schedule. An actor that blocks
on a raw Trio primitive is caught by an idle watchdog.

Many schedules run one after another inside a single ``trio.run``.
"""

from __future__ import annotations

import contextlib
import heapq
import os
import sys
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio
import trio.testing
from trio.lowlevel import Abort, current_task, reschedule, wait_task_rescheduled

from ..errors import EmuError, ScenarioError
from . import accesses, liveness
from .lockdep import Lockdep
from .trace import Trace
from .violations import Stop, Violation, objects_of, prefixed

Predicate = Callable[[], bool]
Check = Callable[[], "str | None"]

TIMER = "timer"
"""The pseudo-actor whose step fires the earliest pending timer (a reserved actor name)."""
CLOCK = "clock"
"""The access name of virtual time and its timers."""


class Sleepers:
    """A primitive whose blocking predicates are its own bound methods and change only when
    it calls ``changed``: a decision that finds such a predicate false parks the actor on
    the primitive (``sleepers``) and stops calling it until then. The list of enabled
    actors, and its order, are exactly those of calling every predicate."""

    __slots__ = ("_ctl", "sleepers")

    def __init__(self, ctl: Controller) -> None:
        self._ctl = ctl
        self.sleepers: list[Actor] = []

    def changed(self) -> None:
        """The state changed: the parked actors are candidates again. (Nothing to do with
        none parked: the frequent callers check ``sleepers`` first.)"""
        if self.sleepers:
            for a in self.sleepers:
                a.parked = False
            self.sleepers = []


def _abort(_raise_cancel: Any) -> Abort:
    return Abort.SUCCEEDED


async def _no_body() -> None:
    """The timer pseudo-actor has no task."""


@attrs.define(eq=False)
class Actor:
    """One Trio task under the controller's thumb."""

    name: str
    index: int
    group: str
    fn: Callable[..., Awaitable[None]]
    args: tuple = ()
    op: str = "start"
    """The operation the actor performs when it is next granted a step."""
    enabled: Predicate | None = None
    """None: always enabled; otherwise the step is possible only when this returns True."""
    waits_for: Any = None
    """The primitive it blocks on (for the wait-for graph)."""
    held: list = attrs.Factory(list)
    """Locks held, in acquisition order (lockdep's held-lock stack)."""
    parked: bool = False
    """Disabled on a ``Sleepers`` primitive that has not changed since: its predicate is
    still false, so a decision need not call it."""
    done: bool = False
    daemon: bool = False
    """A server (memory controller, mailbox loop): it never blocks the schedule's end, and
    waiting for work is not a deadlock."""
    task: Any = None

    def is_enabled(self) -> bool:
        return self.enabled is None or self.enabled()

    def blockers(self) -> list[Actor]:
        holders = getattr(self.waits_for, "holders", None)
        return holders() if holders is not None and not self.is_enabled() else []

    def describe(self) -> str:
        state = "runnable" if self.is_enabled() else "blocked"
        who = ", ".join(a.name for a in self.blockers())
        return f"{self.name}: {state} at '{self.op}'" + (f" (held by {who})" if who else "")


class Controller:
    stall_seconds = 30.0
    """Wall time without a decision after which the watchdog reports a raw-Trio spin."""

    def __init__(self, strategy: Any, *, max_steps: int = 10_000, record: bool = False) -> None:
        self.strategy = strategy
        self.max_steps = max_steps
        self.recorder = accesses.Recorder(record or getattr(strategy, "wants_accesses", False))
        """The accesses of every step (``accesses``): recorded when ``record`` is given or
        the strategy's ``wants_accesses`` is true, else off (a flag test per access)."""
        self.detail = False
        """Record where in the model each step is taken (``Trace.where``): for re-runs that
        explain a schedule, never for hunting."""
        self._limit = max_steps - max_steps // 2
        """The step at which the unfair prefix ends (then the budget), or now when a stop is
        asked."""
        self.fair = False
        """Set once the strategy's own schedule has used its half of the budget."""
        self._fair_from = 0
        self._offer_timer = getattr(strategy, "timer_choices", False)
        self.timer = Actor(TIMER, -1, "controller", _no_body)
        """The pseudo-actor offered to the strategy while timers are pending."""
        self._timer_at = -1
        """The deadline ``timer.op`` names."""
        self._timer_traced = False
        self.yielder: Actor | None = None
        """The actor whose pending step is a yield (``yield_point``), while it decides; a
        strategy that uses it clears it (so it counts once)."""
        self._stop_error: EmuError | None = None
        self.trace = Trace()
        self.lockdep = Lockdep(self)
        self.actors: list[Actor] = []
        self.live: list[Actor] = []
        self.current: Actor | None = None
        self.step = 0
        self.now = 0
        self.invariants: list[tuple[str, Check]] = []
        self.finals: list[tuple[str, Check]] = []
        self.violations: list[Violation] = []
        self.stopped = False
        self.error: EmuError | None = None
        """Set when the run itself is invalid (raw Trio block, replay divergence)."""
        self._timers: list[tuple[int, int]] = []
        """A heap of (deadline, sequence number): earliest first, ties in creation order."""
        self._timer_seq = 0
        self._flow = 0
        self._scope: trio.CancelScope | None = None
        self._watchdog_scope = trio.CancelScope()
        self._starter: Any = None
        self._parked = 0
        self._workers = 0
        self.monitors: liveness.Monitors | None = None
        """The hot/cold monitors (``liveness``), made at the first ``hot`` or fingerprint."""

    # ----------------------------------------------------------------- building
    def spawn(self, name: str, fn: Callable[..., Awaitable[None]], *args: Any,
              group: str = "actors", daemon: bool = False) -> Actor:
        """Register an actor; it starts at the schedule's first decisions. The schedule ends
        when every non-daemon actor has finished."""
        if self._scope is not None:
            raise RuntimeError("actors are spawned while building the machine, before it runs")
        if name == TIMER:
            raise ValueError(f"{TIMER!r} is reserved for the controller's timer pseudo-actor")
        if name in self.trace.actors:  # (the names of the actors spawned so far)
            raise ValueError(f"two actors named {name!r}")
        actor = Actor(name, self.trace.add_actor(name, group), group, fn, args, daemon=daemon)
        self.actors.append(actor)
        self.live.append(actor)
        self._workers += not daemon
        return actor

    def annotate(self, kind: str, text: str, data: Any = None) -> None:
        """A trace event by the current actor (the controller's own, -1, between actors)."""
        self.trace.add(self.step, self.current.index if self.current else -1, kind, text, data)

    def next_flow(self) -> int:
        self._flow += 1
        return self._flow

    def touch(self, name: str, write: bool = False) -> None:
        """The step in progress reads (or writes) the shared object ``name`` (a stable
        name: see ``accesses``); nothing when accesses are not recorded."""
        self.recorder.touch(name, write)

    @property
    def step_accesses(self) -> list[accesses.StepAccesses]:
        """The accesses of the steps taken so far (step ``i`` at index ``i - 1``; the step in
        progress is not among them); empty when not recorded."""
        return self.recorder.steps

    # ----------------------------------------------------------------- scheduling points
    async def point(self, op: str, enabled: Predicate | None = None, waits_for: Any = None) -> None:
        """A scheduling point: the current actor will perform ``op`` once it is enabled and
        the strategy picks it."""
        if self.stopped:
            raise Stop
        actor = self.current
        actor.op = op
        actor.enabled = enabled
        actor.waits_for = waits_for
        chosen = self._decide()
        if chosen is not actor:
            self._hand_over(chosen)
            try:
                await wait_task_rescheduled(_abort)
            except trio.Cancelled:
                raise Stop from None
            if self.stopped:
                # The schedule ended while we were parked (``_halt``): unwind as Stop, so
                # model code sees one exception and its cleanup is inert (see running).
                raise Stop
        actor.enabled = None
        actor.waits_for = None

    async def yield_point(self, op: str) -> None:
        """A retry point: ``cond_resched()``, ``cpu_relax()``, one turn of a retry loop. A
        scheduling point like ``point`` whose step the strategy knows to be a yield: PCT
        drops the actor below every other, so it cannot starve the actor it waits for."""
        if self.stopped:
            raise Stop
        self.yielder = self.current
        try:
            await self.point(op)
        finally:
            self.yielder = None  # a strategy that reads it clears it at once (PCT)

    def running(self) -> Actor:
        """The actor calling into a primitive; raises Stop once the schedule has ended, so
        that cleanup code run while actors unwind changes nothing."""
        if self.stopped:
            raise Stop
        return self.current

    async def sleep(self, dt: int) -> None:
        """Sleep ``dt`` units of virtual time (nanoseconds by convention)."""
        if dt < 0:
            raise ValueError("sleep takes a non-negative duration")
        self.might_sleep("sleep", dt)
        deadline = self.now + dt
        rec = self.recorder
        if dt:  # a zero sleep is due already: no timer to fire
            self._timer_seq += 1
            heapq.heappush(self._timers, (deadline, self._timer_seq))
            if rec.on:  # a new timer changes what the timer step does
                rec.touch(CLOCK, True)
        await self.point(f"sleep {dt}", lambda: self.now >= deadline)
        if rec.on:  # it woke because of the time
            rec.touch(CLOCK)

    def might_sleep(self, call: str, arg: Any) -> None:
        """The kernel's might_sleep() in ``call(arg)``: sleeping while holding a spinlock is
        a bug. (The call is named in parts: most callers hold no lock, and then no text is
        built. It does nothing unless the schedule has stopped or the actor holds a lock:
        the primitives most used check that themselves before calling it.)"""
        if self.stopped:
            raise Stop
        held = self.current.held  # (``running`` inlined: this is on every send and lock)
        spin = [h.lock.name for h in held if h.lock.atomic] if held else None
        if spin:
            self.fail("sleep-in-atomic",
                      f"BUG: sleeping function called from invalid context: {call}({arg}) "
                      f"while holding spinlock {', '.join(spin)}")

    # ----------------------------------------------------------------- findings
    def fail(self, kind: str, message: str, *, details: str = "", fatal: bool = True) -> None:
        """Record a violation; a fatal one ends the schedule (raises Stop in the caller).
        Once the schedule has ended nothing more is recorded."""
        if self.stopped:
            raise Stop
        actor = self.current
        text = str(message)  # a plain str in the trace: ``About``'s objects are not hashed
        self.violations.append(Violation(kind, text, self.step, actor.name if actor else None,
                                         details, fatal, objects_of(message),
                                         getattr(message, "at", None)))
        self.trace.add(self.step, actor.index if actor else -1, "violation", text, kind)
        if fatal:
            self._halt()
            raise Stop

    def abort_run(self, error: EmuError) -> None:
        """End the schedule because the run is invalid, not because the model is wrong."""
        self.error = error
        self._halt()
        raise Stop

    def stop_soon(self, error: EmuError) -> None:
        """End the run with ``error`` at the next decision (safe from a signal handler: it
        only lowers the step limit that every decision compares against anyway)."""
        self._stop_error = error
        self._limit = -1

    def _check(self, checks: list[tuple[str, Check]]) -> None:
        for name, check in checks:
            try:
                message = check()
            except Exception as exc:  # a broken invariant function is still a finding
                message = f"raised {type(exc).__name__}: {exc}"
            if message:
                self.fail("invariant", prefixed(f"{name}: ", message))

    def _halt(self) -> None:
        """End the schedule: nothing more is recorded, and every actor parked at a
        scheduling point is woken to unwind (its point raises Stop): much cheaper than
        cancelling their Trio tasks. The current actor is parked nowhere: it is running, or
        blocked in raw Trio, which only the watchdog's cancel reaches."""
        if self.stopped:
            return
        self.stopped = True
        self.trace.closed = True
        if self.recorder.on:  # the step in progress ends here
            self.recorder.close(self.step)
        if self._scope is None:
            return
        self._watchdog_scope.cancel()
        running = current_task()
        for a in self.live:
            if a is not self.current and a.task is not running:
                reschedule(a.task)

    # ----------------------------------------------------------------- the decision
    def _decide(self) -> Actor | None:
        """Pick the actor that takes the next step; None when every non-daemon actor has
        finished. A step of the timer pseudo-actor is taken here, then the decision is
        made again."""
        if self.recorder.on:  # the step in progress ends at this decision
            self.recorder.close(self.step)
        if not self._workers:
            return None
        if self.invariants:
            self._check(self.invariants)
        enabled: list[Actor] = []
        for a in self.live:
            if a.parked:
                continue
            pred = a.enabled
            if pred is None or pred():
                enabled.append(a)
            elif getattr(pred, "__self__", None) is a.waits_for and \
                    isinstance(a.waits_for, Sleepers):
                self._park(a)
        if self._timers:
            self._timer_candidate(enabled)
        elif not enabled:
            self._deadlock()
        if self.step >= self._limit:
            self._out_of_steps()
        if self.recorder.on:  # what the checks and predicates read is no step's
            self.recorder.close(self.step)
        chosen = self.strategy.choose(enabled, self)
        self.step += 1
        if chosen is self.timer:
            return self._timer_step()
        self.trace.events.append((self.step, chosen.index, "step", chosen.op, self.now))
        if self.detail:
            self.trace.where[self.step] = model_frames(chosen, chosen is self.current)
        return chosen

    def _park(self, actor: Actor) -> None:
        """Leave this disabled actor out of the next decisions until the primitive it waits
        on changes (``Sleepers.changed``). A flag, not a list of the others: parking and waking
        are as frequent as decisions in a machine of mailboxes and completions."""
        actor.parked = True
        actor.waits_for.sleepers.append(actor)

    def _timer_candidate(self, enabled: list[Actor]) -> None:
        """Timers are pending: fire them while nobody can run (forced, not a decision), then
        offer the timer pseudo-actor as one more candidate (if timers are choices)."""
        while not enabled and self._timers:
            self._fire()
            enabled += [a for a in self.live if a.enabled is None or a.enabled()]
        if not enabled:
            self._deadlock()
        if self._timers and (self._offer_timer or self.fair):
            deadline = self._timers[0][0]
            if deadline != self._timer_at:  # (the same earliest timer: the same operation)
                self._timer_at, self.timer.op = deadline, f"fire timer at {deadline}"
            enabled.append(self.timer)

    def _timer_step(self) -> Actor | None:
        """The strategy chose the timer: fire it, record the step, and decide again."""
        self._fire()
        if self.recorder.on:
            self.recorder.touch(CLOCK, True)
        if not self._timer_traced:
            self._timer_traced = True
            self.trace.add_actor(TIMER, "controller")
        self.trace.events.append((self.step, self.timer.index, "step", self.timer.op,
                                  self.now))
        return self._decide()

    def _fire(self) -> None:
        """Advance virtual time to the earliest timer and retire every timer due by then."""
        self.now = self._timers[0][0]
        while self._timers and self._timers[0][0] <= self.now:
            heapq.heappop(self._timers)

    def _out_of_steps(self) -> None:
        """The step limit is reached: a requested stop, the end of the unfair prefix (the
        rest of the budget runs fairly), or a livelock under a fair continuation."""
        if self._stop_error is not None:
            self.abort_run(self._stop_error)
        if not self.fair:
            self.fair = True
            self._fair_from = self.step
            if self.monitors is not None and self.monitors.fingerprint is not None:
                self.strategy = liveness.Fingerprinting(self.strategy, self.monitors)
            self._limit = self.max_steps
            if self._stop_error is not None:  # a signal between the check and the store
                self._limit = -1
            if self.step < self._limit:
                return
        counts: dict[int, int] = {}
        for step, actor, kind, _, _ in reversed(self.trace.events):
            if step <= self._fair_from:
                break
            if kind == "step":
                counts[actor] = counts.get(actor, 0) + 1
        names = self.trace.actors
        cycle = {a.index for a in self.live} | {self.timer.index}  # not those that finished
        busy = sorted((i for i in counts if i in cycle), key=lambda i: (-counts[i], i))
        message = f"no progress in {self.max_steps} steps"
        if busy:
            message += (f": {', '.join(names[i] for i in busy)} kept stepping through the last "
                        f"{self.step - self._fair_from} steps, under a fair schedule")
        lines = ["  " + a.describe() for a in self.live]
        if busy:
            lines.append("  steps in the fair suffix: "
                         + ", ".join(f"{names[i]} {counts[i]}" for i in busy))
        message, details = liveness.livelock(self, self._fair_from, cycle, message, lines)
        self.fail("liveness", message, details=details)

    def _hand_over(self, actor: Actor) -> None:
        self.current = actor
        reschedule(actor.task)

    def _deadlock(self) -> None:
        cycle = self._wait_for_cycle()
        if cycle:
            parts = [f"{a.name} waits in '{a.op}' for {b.name}"
                     for a, b in zip(cycle, cycle[1:] + cycle[:1], strict=True)]
            message = "; ".join(parts)
        else:
            stuck = [a for a in self.live if not a.daemon]
            message = "; ".join(f"{a.name} waits in '{a.op}'" for a in stuck) + \
                " for something no actor will do"
        self.current = None
        self.fail("deadlock", message, details="\n".join("  " + a.describe() for a in self.live))

    def _wait_for_cycle(self) -> list[Actor]:
        """A cycle in the wait-for graph (actor -> the actors holding what it waits for)."""
        visited: set[int] = set()

        def search(path: list[Actor]) -> list[Actor]:
            for b in path[-1].blockers():
                if b in path:
                    return path[path.index(b):]
                if b.index not in visited:
                    visited.add(b.index)
                    found = search([*path, b])
                    if found:
                        return found
            return []

        for start in self.live:
            found = search([start])
            if found:
                return found
        return []

    # ----------------------------------------------------------------- running
    async def run(self) -> None:
        """Run the schedule to its end (inside the caller's ``trio.run``); for its duration
        ``accesses.current`` is this controller's recorder."""
        accesses.current = self.recorder
        try:
            await self._run()
        finally:
            accesses.current = accesses.OFF

    async def _run(self) -> None:
        async with trio.open_nursery() as nursery:
            self._scope = nursery.cancel_scope
            if self.actors:
                # The last actor to park wakes us: cheaper than nursery.start per actor.
                self._starter = current_task()
                for actor in self.actors:
                    nursery.start_soon(self._actor_main, actor)
                await wait_task_rescheduled(_abort)
            self.timer.index = len(self.actors)  # its trace index, once it first fires
            nursery.start_soon(self._watchdog)
            try:
                first = self._decide()
            except Stop:
                return
            if first is None:
                self._finished()
            else:
                self._hand_over(first)

    async def _actor_main(self, actor: Actor) -> None:
        actor.task = current_task()
        self._parked += 1
        if self._parked == len(self.actors):
            reschedule(self._starter)
        try:
            await wait_task_rescheduled(_abort)
            if self.stopped:  # the schedule ended before its first step (``_halt``)
                return
            actor.enabled = None
            await actor.fn(*actor.args)
            if actor.held:
                self.fail("lock-leak", f"{actor.name} exits holding "
                          + ", ".join(h.lock.name for h in actor.held))
        except Stop:
            return
        except (Exception, SystemExit) as exc:  # sys.exit() in model code is a crash too
            self._crash(actor, exc)
            return
        self._finish(actor)

    def _crash(self, actor: Actor, exc: BaseException) -> None:
        tb = "".join(traceback.format_exception(exc))
        try:
            self.fail("exception", f"{actor.name} raised {type(exc).__name__}: {exc}", details=tb)
        except Stop:
            pass

    def _finish(self, actor: Actor) -> None:
        actor.done = True
        actor.op = "exit"
        self.live.remove(actor)
        self._workers -= not actor.daemon
        try:
            chosen = self._decide()
        except Stop:
            return
        if chosen is None:
            self._finished()
        else:
            self._hand_over(chosen)

    def _finished(self) -> None:
        self.current = None
        self._watchdog_scope.cancel()
        try:
            self._check(self.finals)
            if self.monitors is not None:  # a monitor still hot never cooled
                self.monitors.at_end()
        except Stop:
            return
        if self.live:  # daemons still waiting for work: stop them
            self._halt()

    async def _watchdog(self) -> None:
        """Catches an actor that escaped the controller through raw Trio.

        It wakes if every task is blocked while the schedule still runs (the baton holder
        blocks somewhere the controller cannot see), or if Trio keeps running but no
        decision is taken for ``stall_seconds`` of wall time (an actor spinning on raw
        checkpoints). Wall time only decides *when* a broken scenario is reported; it never
        feeds a decision. An actor blocked inside a shielded raw Trio scope cannot be
        cancelled and is beyond its reach.
        """
        with self._watchdog_scope:
            while True:
                seen = self.step
                with trio.move_on_after(self.stall_seconds) as timer:
                    await trio.testing.wait_all_tasks_blocked()
                if not timer.cancelled_caught:
                    message = describe_raw_block(self.current)
                    break
                if self.step == seen:
                    message = (f"actor '{self.current.name}' took no scheduling decision in "
                               f"{self.stall_seconds:g} s of wall time while Trio kept running: "
                               "it spins on a raw Trio checkpoint (trio.sleep(0), "
                               "checkpoint()) instead of a model primitive")
                    break
            self.error = ScenarioError(message)
            self._halt()
            self._scope.cancel()  # the current actor waits in raw Trio: only this reaches it

def _await_chain(actor: Actor, running: bool) -> list[Any]:
    """The frames of ``actor``'s stack, outermost first: from the live frame if it runs,
    else down its chain of awaited coroutines."""
    if running:  # up to the actor's task root, not into Trio's run loop and its caller
        frames, frame = [], sys._getframe()
        while frame is not None and frame.f_code is not _ACTOR_ROOT:
            frames.append(frame)
            frame = frame.f_back
        return frames[::-1]
    frames, coro = [], actor.task.coro if actor.task is not None else None
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None:
            frames.append(frame)
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return frames


_ACTOR_ROOT = Controller._actor_main.__code__
_NOT_MODEL = (os.path.dirname(__file__), os.path.dirname(trio.__file__),
              os.path.dirname(contextlib.__file__))
"""The engine, Trio and the standard library: what a model-frame walk skips."""


def _argument(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | str):
        return None
    return f"{value:#x}" if isinstance(value, int) and abs(value) >= 4096 else repr(value)


def model_frames(actor: Actor, running: bool) -> str:
    """Where in the model ``actor`` is about to take its step (a ``trace.Where``): the
    innermost model function with its plain arguments, and the function that called it
    (``kvmppc_svm_page_in(gpa=0x50000) < kvmppc_h_svm_page_in``), passing over private
    helpers (a leading underscore: the model's plumbing, not a kernel function) unless
    only the actor's own loop is left; with the requests the entry points on the stack serve
    (``explain.entry``). Costly (a stack walk), so only a re-run for an explanation records
    it (``Controller.detail``)."""
    from .explain import requests  # imported here: a hunt never gets this far
    from .trace import Where

    frames = [f for f in _await_chain(actor, running)
              if not f.f_code.co_filename.startswith(_NOT_MODEL)]
    if not frames:
        return Where("")
    at = next((i for i in range(len(frames) - 1, 0, -1)  # (the actor's own loop is none)
               if not frames[i].f_code.co_name.startswith(("_", "<"))), len(frames) - 1)
    inner = frames[at]
    code = inner.f_code
    args = []
    for name in code.co_varnames[:code.co_argcount]:
        text = _argument(inner.f_locals.get(name))
        if text is not None:
            args.append(f"{name}={text}")
    where = f"{code.co_name}({', '.join(args)})"
    if at:
        where += f" < {frames[at - 1].f_code.co_name}"
    return Where(where, requests(frames))


def describe_raw_block(actor: Actor | None) -> str:
    """Name the raw Trio primitive an actor is blocked in, and where it was called from."""
    if actor is None or actor.task is None:
        return "every task is blocked outside the controller"
    frames = _await_chain(actor, False)
    trio_dir = os.path.dirname(trio.__file__)
    for i, frame in enumerate(frames):
        if frame.f_code.co_filename.startswith(trio_dir):
            culprit = frame.f_code.co_qualname
            caller = frames[i - 1] if i else frame
            where = f"{os.path.basename(caller.f_code.co_filename)}:{caller.f_lineno}"
            break
    else:
        culprit, where = "an await the controller does not own", "?"
    return (f"actor '{actor.name}' is blocked in trio {culprit} (called at {where}), outside "
            "the controller: actors must synchronise only through the machine's primitives "
            "(mutex, spinlock, srcu, channel, completion, sleep), never raw Trio")
