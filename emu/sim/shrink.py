"""Shrinking a failing schedule: fewest preemptions first, then fewest steps, then fewest
actors, keeping the same violation (``replay.violation_key``: its kind and its message with
the numbers masked).

A schedule is rewritten as what made it, in one of two forms, each run by a strategy that
lets the running actor go on while it can (run-to-block), so that a run takes a preemption
(a switch away from an actor that could have gone on; the timer pseudo-actor's steps and a
yield aside) only where its form asks for one:

- a **plan** (``Directed``): the preemptions, each keyed by the label ``(actor, op, n)`` the
  preempted actor stood at and naming the actor switched to; at every other switch, the
  runnable actor whose label the original took first. With every preemption of the
  original it replays the original step for step.
- **ordering constraints** (``Constrained``): "the step labelled A comes before the step
  labelled B", taken from the original: its conflicting pairs of accesses (who wrote what
  another read or wrote next, ``guided.conflict_pairs``) and, at each switch away from an
  actor that could have gone on, that actor waiting for the step taken instead; where the
  access relation misses what decides the violation, also the original's order at every
  switch between actors (with those, the original step for step). An actor held back by a
  constraint gives way; at every other switch the actor that stepped least recently goes,
  so a retry loop alternates with the actor it waits for as on two CPUs instead of
  replaying the original's arbitrary choices (a plan edited at one preemption shifts every
  later label, and the original's order then means nothing).

The passes edit a form and keep an edit when a run of it ends in the same violation with
(preemptions, steps, actors) no greater, lexicographically:

| pass                 | edit                                                          | keeps if |
|----------------------|---------------------------------------------------------------|----------|
| rebuild (``pairs``)  | the schedule as constraints; none of them, else delta        | smaller  |
|                      | debugging (ddmin) over them (a run also drops, for free, the  |          |
|                      | constraints that never held anyone back): the constraints that|          |
|                      | decide the violation stay, everything else runs to block      |          |
| remove preemptions   | none; only one (latest first); only the last 2, 4, 8...;     | not worse |
|                      | then ddmin over the plan's preemptions: the preempted actor   |          |
|                      | runs on instead                                               |          |
| move a preemption    | one step earlier or later in the preempted actor: the steps  | better   |
|                      | in between change order, tried only when they are            |          |
|                      | independent (``accesses.dependent`` over the steps' recorded |          |
|                      | accesses; no conflicting pair)                               |          |
| defer an actor       | an actor stepping after the first preemption is chosen only  | better   |
|                      | when nobody else can run (actors are the scenario's: "fewest |          |
|                      | actors" counts those that step from the first preemption on) |          |
| retarget (above      | one preemption switches to another actor, then remove        | better   |
| ``FEW`` preemptions) |                                                               |          |
| single (2 or more,   | a plan of one preemption: each label the run took while its  | better   |
| short schedules)     | actor ran on, to each other actor, latest first (at most     |          |
|                      | ``SINGLES`` plans)                                            |          |

Order (``descend``): a schedule with more than ``FEW`` preemptions is rebuilt first, one with
fewer once the plan's passes are stuck; it is rebuilt again from every smaller schedule the
plan's passes reach, until nothing improves or the budget of replays is spent. From more
than ``FEW`` preemptions, if that ends above one, the plan's passes alone run from the
original too (a different local minimum) and the smaller result is kept. A replay that has
not shown the violation within ``STEPS`` times the original's steps is lost (it would run to
the end of the step budget). Every run is a pure function of its form, so the shrunk
schedule is an ordinary decision list that a strict replay reproduces bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

from ..errors import EmuError
from .accesses import StepAccesses, dependent
from .controller import TIMER, Actor, Controller
from .guided import Constraint, Ordered, conflict_pairs
from .replay import violation_key
from .runner import RunResult, prepare, run_schedule
from .strategies import Label, Labels, Replay, labelled

BUDGET = 200
"""Replays one shrink may spend (each is one run of the scenario)."""

STEPS, MARGIN = 3, 100
"""A replay stops after ``STEPS`` times the original's steps plus ``MARGIN`` (a liveness
violation aside): one that has not shown the violation by then is taken as lost."""

FEW = 3
"""A schedule with more preemptions is rebuilt from constraints before the plan's passes
start on it, and may be retargeted (``_Shrinker.descend``)."""

SINGLES = 64
"""The most plans of one preemption the ``single`` pass tries."""

Size = tuple[int, int, int]
"""(preemptions, steps, actors): what shrinking minimises, in that order."""


class Directed(Labels):
    """Run a plan: run-to-block, preempting where ``preempt`` says (label of the running
    actor -> the actor to switch to), else the actor whose label ``order`` ranks first. At
    a yield point (a retry loop's turn) that rule decides too, and a switch there is no
    preemption: the yielding actor goes on where the original had it go on, and gives way
    to the others beyond; once a preemption has happened, ``deferred`` actors run only
    when nobody else can."""

    def __init__(self, order: dict[Label, int], preempt: dict[Label, str],
                 deferred: frozenset[str] = frozenset()) -> None:
        super().__init__()
        self.order = order
        self.preempt = preempt
        self.deferred = deferred

    def spec(self) -> dict[str, Any]:
        return {"name": "shrink"}

    def choose(self, enabled: list[Actor], ctl: Controller) -> Actor:
        last = self.last
        going_on = last is not None and last is not ctl.timer and last in enabled
        if going_on and last is not ctl.yielder:
            target = self.preempt.get(self.label(last))
            switch = next((a for a in enabled if a.name == target), last)
            return self.took(switch, enabled, ctl)
        pool = enabled
        if self.deferred and self.preemptions:
            pool = [a for a in pool if a.name not in self.deferred] or pool
        # (a yielding actor goes on only where the original had it go on: past the
        # original's labels, it gives way to the others)
        chosen = min(pool, key=lambda a: (self.order.get(self.label(a), math.inf), a is last))
        return self.took(chosen, enabled, ctl)


class Constrained(Ordered):
    """Run ordering constraints ``(before, after)`` between labels: a step labelled
    ``after`` waits until ``before`` is taken. The running actor goes on while it can and
    may (run-to-block; a yield gives way); otherwise, among the actors that may step (all
    of them, when the constraints hold everyone), the one whose label ``order`` knows
    (the schedule the constraints came from took it), then the one that stepped least
    recently: a fair default, so a retry loop alternates with the actor it waits for as
    it does on two CPUs, and a preemption is taken only where a constraint forces one.
    The timer fires only when no actor may step. ``bit`` collects the constraints that
    held an actor back at some decision: without the others the run is the same."""

    def __init__(self, order: dict[Label, int], constraints: list[Constraint]) -> None:
        super().__init__(constraints)
        self.order = order
        self._stepped: dict[str, int] = {}
        self.bit: dict[Constraint, None] = {}

    def spec(self) -> dict[str, Any]:
        return {"name": "shrink"}

    def _held(self, actor: Actor) -> bool:
        """Does a constraint hold ``actor`` back now? (noting each one that does)"""
        label = self.label(actor)
        pending = self.pending(actor)
        for before in pending:
            self.bit[before, label] = None
        return bool(pending)

    def choose(self, enabled: list[Actor], ctl: Controller) -> Actor:
        pool = [a for a in enabled if not self._held(a)] or enabled
        last = self.last
        if last is not None and last is not ctl.timer and last is not ctl.yielder and \
                last in pool:
            chosen = last
        else:
            chosen = min(pool, key=lambda a: (a is ctl.timer, self.label(a) not in self.order,
                                              self._stepped.get(a.name, -1)))
        self._stepped[chosen.name] = ctl.step
        return self.took(chosen, enabled, ctl)


class _Switches(Replay):
    """A strict replay that also notes every switch away from an actor that could have
    gone on, a yield's included: (the step, the label it stood at)."""

    def __init__(self, decisions: list[tuple[int, str, str]]) -> None:
        super().__init__(decisions)
        self.away: list[tuple[int, Label]] = []

    def took(self, chosen: Actor, enabled: list[Actor], ctl: Controller) -> Actor:
        last = self.last
        if last is not None and last is not chosen and last is not ctl.timer and \
                last in enabled:
            self.away.append((ctl.step + 1, self.label(last)))
        return super().took(chosen, enabled, ctl)


def size(result: RunResult, strategy: Labels) -> Size:
    """(preemptions, steps, actors stepping from the first preemption on, the preempted
    actor included; 0 without a preemption)."""
    actors = 0
    if strategy.preemptions:
        first = strategy.preemptions[0][0] - 1
        actors = len({name for step, name, _ in result.decisions
                      if step >= first and name != TIMER})
    return len(strategy.preemptions), result.steps, actors


def describe(before: Size, after: Size) -> str:
    """``P preemptions, S steps, A actors -> P', S', A'``."""
    return (f"{before[0]} preemptions, {before[1]} steps, {before[2]} actors -> "
            f"{after[0]}, {after[1]}, {after[2]}")


@attrs.frozen
class Shrunk:
    """A shrunk schedule and what shrinking it took."""

    original: RunResult
    result: RunResult
    """The shrunk schedule (reporting the original's strategy and seed), or the original
    when it could not be re-run."""
    before: Size
    after: Size
    replays: int
    note: str = ""
    """Why nothing was shrunk, when nothing could be (then the sizes are not measured)."""

    def line(self) -> str:
        if self.note:
            return f"shrunk: nothing ({self.note})"
        return f"shrunk: {describe(self.before, self.after)} ({self.replays} replays)"

    def record(self) -> dict[str, Any]:
        """The ``shrunk`` record of the shrunk replay file."""
        return {"preemptions": [self.before[0], self.after[0]],
                "steps": [self.before[1], self.after[1]],
                "actors": [self.before[2], self.after[2]],
                "replays": self.replays, "from_trace_hash": self.original.trace_hash}


@attrs.define
class _Best:
    result: RunResult
    strategy: Labels
    size: Size

    def plan(self) -> tuple[dict[Label, int], list[tuple[Label, str]]]:
        order = {lab: i for i, lab in enumerate(labelled(self.result.decisions))}
        return order, [(lab, name) for _, lab, name in self.strategy.preemptions]


class _Shrinker:
    def __init__(self, original: RunResult, budget: int) -> None:
        self.original = original
        self.key = violation_key(original.violation)
        self.sc, self.values, self.quirks = prepare(original.scenario, original.params,
                                                    original.quirks, original.release)
        self.budget = budget
        self.replays = 0
        # A livelock ("no progress") needs the whole step budget; any other violation (a
        # monitor still hot at the end included) shows within a few times the original's
        # steps, and a replay that misses it would otherwise run on to the end of the
        # budget. (A step budget changes nothing before it is reached: the fair suffix
        # changes no choice of these strategies, which offer the timer.)
        long = original.violation is not None and original.violation.kind == "liveness" \
            and original.steps >= original.max_steps
        self.max_steps = original.max_steps if long else \
            min(original.max_steps, STEPS * original.steps + MARGIN)

    async def run(self, strategy: Labels) -> RunResult | None:
        """One replay; None when it is invalid or the budget is spent."""
        if self.replays >= self.budget:
            return None
        self.replays += 1
        o = self.original
        try:
            return await run_schedule(self.sc, self.values, self.quirks, strategy, o.seed,
                                      self.max_steps, o.release, accesses=True)
        except EmuError:
            return None

    async def attempt(self, best: _Best, order: dict[Label, int],
                      preempt: list[tuple[Label, str]], deferred: frozenset[str],
                      strict: bool) -> _Best | None:
        """Run a plan; the new best if it keeps the violation and is smaller than ``best``
        (``strict``) or no greater."""
        strategy = Directed(order, dict(preempt), deferred)
        result = await self.run(strategy)
        if result is None or violation_key(result.violation) != self.key:
            return None
        got = _Best(result, strategy, size(result, strategy))
        return got if got.size < best.size or (not strict and got.size == best.size) else None

    async def ddmin(self, items: list[Any],
                    keeps: Callable[[list[Any]], Awaitable[list[Any] | None]]) -> list[Any]:
        """Delta debugging: a 1-minimal sublist of ``items`` that ``keeps`` accepts (which
        ``items`` is), or what is left when the budget is spent. ``keeps`` returns None for
        a sublist it rejects, else the part of it that mattered (at most all of it)."""
        n = 2
        while len(items) >= 2 and self.replays < self.budget:
            chunk = math.ceil(len(items) / n)
            for start in range(0, len(items), chunk):
                kept = await keeps(items[:start] + items[start + chunk:])
                if kept is not None:
                    items, n = kept, max(min(n - 1, len(kept)), 2)
                    break
            else:
                if n >= len(items):
                    break
                n = min(2 * n, len(items))
        return items

    async def pairs(self, best: _Best) -> _Best:
        """Rebuild the schedule from ordering constraints only (``Constrained``), and keep
        as few as still decide the violation: none; else the original's conflicting pairs
        of accesses (``guided.conflict_pairs``) and, for every switch away from an actor
        that could have gone on (``away``), that actor waiting for the step taken instead
        (its next step may lie past the original's end); else, where the access relation
        misses what decides it, those and the original's order at every switch between
        actors. Then ddmin over the constraints; the smallest run seen is the new best."""
        result = best.result
        labels = labelled(result.decisions)
        order = {lab: i for i, lab in enumerate(labels)}
        away = best.strategy.away if isinstance(best.strategy, _Switches) else None

        async def keeps(constraints: list[Constraint]) -> list[Constraint] | None:
            nonlocal best
            strategy = Constrained(order, constraints)
            got = await self.run(strategy)
            if got is None or violation_key(got.violation) != self.key:
                return None
            mine = _Best(got, strategy, size(got, strategy))
            if mine.size < best.size:
                best = mine
            return [c for c in constraints if c in strategy.bit]

        if await keeps([]) is not None:
            return best
        if away is None:  # (a shrunk schedule: replay it to see where it switched)
            replay = _Switches(result.decisions)
            if await self.run(replay) is None:
                return best
            away = replay.away
        holds = [(labels[step - 1], lab) for step, lab in away]
        pairs = _unique([(labels[i - 1], labels[j - 1]) for _, i, j in conflict_pairs(result)]
                        + holds)
        kept = await keeps(pairs)
        if kept is None:
            switches = [(labels[j - 1], labels[j]) for j in range(1, len(labels))
                        if labels[j - 1][0] != labels[j][0]]
            kept = await keeps(_unique(pairs + switches))
            if kept is None:
                return best
        kept.sort(key=lambda c: order.get(c[1], len(order)))
        await self.ddmin(kept, keeps)
        return best

    async def remove(self, best: _Best, deferred: frozenset[str]) -> _Best:
        """Drop as many preemptions as the violation allows: all of them; all but one (the
        latest first, up to an eighth of the budget: a race usually needs one preemption
        close to where it shows); all but the last 2, 4, 8...; then ddmin over what is left."""
        order, items = best.plan()
        for keep in [[], *([item] for item in items[::-1][:self.budget // 8])]:
            if len(keep) >= len(items):
                break
            got = await self.attempt(best, order, keep, deferred, strict=False)
            if got is not None:
                return got
        k = 2
        while k < len(items):
            got = await self.attempt(best, order, items[-k:], deferred, strict=False)
            if got is not None:
                best, items = got, items[-k:]
                break
            k *= 2

        async def without(rest: list[tuple[Label, str]]) -> list[tuple[Label, str]] | None:
            nonlocal best
            got = await self.attempt(best, order, rest, deferred, strict=False)
            if got is None:
                return None
            best = got
            return rest

        await self.ddmin(items, without)
        return best

    async def move(self, best: _Best, deferred: frozenset[str]) -> _Best | None:
        """Move one preemption a step earlier or later in the preempted actor, past steps
        independent of those it is moved past; the first move that shrinks the schedule."""
        order, items = best.plan()
        labels = labelled(best.result.decisions)
        accesses = best.result.accesses or []
        for k, (lab, target) in enumerate(items):
            at = best.strategy.preemptions[k][0] - 1  # the preempting step's index
            mine = [i for i, other in enumerate(labels) if other[0] == lab[0]]
            after = [i for i in mine if i >= at]
            moves = []
            if at >= 1 and labels[at - 1][0] == lab[0]:
                # switch before the actor's previous step, which moves past the target's run
                moves.append((labels[at - 1], at - 1, range(at, _run_end(labels, at))))
            if len(after) >= 2:
                # the actor takes its next step first, moved past every step in between
                moves.append((labels[after[1]], after[0], range(at, after[0])))
            for key, moved, past in moves:
                if not _independent(accesses, moved, past):
                    continue
                plan = [*items[:k], (key, target), *items[k + 1:]]
                got = await self.attempt(best, order, plan, deferred, strict=True)
                if got is not None:
                    return got
        return None

    async def retarget(self, best: _Best, deferred: frozenset[str]) -> _Best | None:
        """Switch one preemption to another actor, then remove the preemptions that makes
        redundant; the first such change that shrinks the schedule."""
        order, items = best.plan()
        names = dict.fromkeys(name for _, name, _ in best.result.decisions if name != TIMER)
        for k, (lab, target) in enumerate(items):
            for name in names:
                if name in (target, lab[0]):
                    continue
                plan = [*items[:k], (lab, name), *items[k + 1:]]
                got = await self.attempt(best, order, plan, deferred, strict=False)
                if got is not None:
                    got = await self.remove(got, deferred)
                    if got.size < best.size:
                        return got
        return None

    async def single(self, best: _Best, deferred: frozenset[str]) -> _Best | None:
        """A short schedule: every plan of one preemption, latest first (each label the
        best run took while its actor ran on, or preempted it at, switching to each other
        actor); the first that keeps the violation. Skipped when they would be more than
        ``SINGLES``."""
        order, items = best.plan()
        labels = labelled(best.result.decisions)
        at = dict.fromkeys([*(lab for i, lab in enumerate(labels)
                              if i and labels[i - 1][0] == lab[0] != TIMER),
                            *(lab for lab, _ in items)])
        names = list(dict.fromkeys(lab[0] for lab in labels if lab[0] != TIMER))
        if len(at) * (len(names) - 1) > SINGLES:
            return None
        for lab in sorted(at, key=lambda x: order.get(x, len(order)), reverse=True):
            for name in names:
                if name != lab[0]:
                    got = await self.attempt(best, order, [(lab, name)], deferred, strict=True)
                    if got is not None:
                        return got
        return None

    async def defer(self, best: _Best, deferred: frozenset[str]
                    ) -> tuple[_Best, frozenset[str]] | None:
        """Defer one actor stepping after the first preemption, if that shrinks it."""
        if not best.strategy.preemptions:
            return None
        order, items = best.plan()
        first = best.strategy.preemptions[0][0]
        acting = [name for step, name, _ in best.result.decisions if step >= first]
        for name in dict.fromkeys(acting):
            if name == TIMER or name in deferred:
                continue
            plan = [(lab, target) for lab, target in items if target != name]
            got = await self.attempt(best, order, plan, deferred | {name}, strict=True)
            if got is not None:
                return got, deferred | {name}
        return None

    async def descend(self, best: _Best, rebuild: bool) -> _Best:
        """The passes, until none improves or the budget is spent: the plan's (remove, move,
        defer; once those are stuck, retarget above ``FEW`` preemptions, then single from
        two up, once per size) and, with ``rebuild``, ``pairs``: first if the schedule has
        more than ``FEW`` preemptions, else once the plan's passes are stuck, and again
        whenever they got it smaller since."""
        deferred: frozenset[str] = frozenset()
        rebuilt: Size | None = None  # the size of the best last rebuilt from constraints
        swept: Size | None = None  # the size of the best ``single`` last started from
        stuck = False
        while self.replays < self.budget:
            if rebuild and best.size[0] and (stuck or best.size[0] > FEW) and \
                    (rebuilt is None or best.size < rebuilt):
                rebuilt = best.size
                got = await self.pairs(best)
                if got is not best:
                    best, deferred = got, frozenset()
            best = await self.remove(best, deferred)
            moved = await self.move(best, deferred)
            if moved is not None:
                best = moved
                continue
            narrowed = await self.defer(best, deferred)
            if narrowed is not None:
                best, deferred = narrowed
                continue
            moved = None
            if best.size[0] > FEW:  # (costly: only while above the bar)
                moved = await self.retarget(best, deferred)
            if moved is None and best.size[0] > 1 and best.size != swept:
                swept = best.size
                moved = await self.single(best, deferred)
            if moved is not None:
                best = moved
                continue
            if not (rebuild and best.size[0]) or (rebuilt is not None and best.size >= rebuilt):
                break
            stuck = True
        return best

    async def shrink(self) -> Shrunk:
        o = self.original
        replay = _Switches(o.decisions)
        result = await self.run(replay)
        if result is None or result.trace_hash != o.trace_hash:
            whole = (0, o.steps, 0)
            return Shrunk(o, o, whole, whole, self.replays,
                          "the schedule does not replay, so it was not shrunk")
        start = _Best(result, replay, size(result, replay))
        best = await self.descend(start, rebuild=True)
        if start.size[0] > FEW and best.size[0] > 1:
            # (from many preemptions, the plan's passes alone sometimes reach a smaller
            # local minimum than the rebuilt schedule's)
            other = await self.descend(start, rebuild=False)
            best = other if other.size < best.size else best
        shrunk = attrs.evolve(best.result, strategy=o.strategy, max_steps=o.max_steps)
        return Shrunk(o, shrunk, start.size, best.size, self.replays)


def _run_end(labels: list[Label], start: int) -> int:
    """The end of the run of consecutive steps of one actor that begins at ``start``."""
    end = start
    while end < len(labels) and labels[end][0] == labels[start][0]:
        end += 1
    return end


def _unique(constraints: list[Constraint]) -> list[Constraint]:
    """The constraints without repeats, in their first order."""
    return list(dict.fromkeys(constraints))


def _independent(accesses: list[StepAccesses], moved: int, past: range) -> bool:
    """Does step index ``moved`` commute with every step index in ``past``?"""
    if moved >= len(accesses):
        return False
    return not any(i < len(accesses) and dependent(accesses[moved], accesses[i]) for i in past)


def shrink(result: RunResult, budget: int = BUDGET) -> Shrunk:
    """Shrink a failing schedule with at most ``budget`` replays."""
    if result.violation is None:
        raise EmuError("only a schedule that found a violation can be shrunk")
    return trio.run(_Shrinker(result, budget).shrink)
