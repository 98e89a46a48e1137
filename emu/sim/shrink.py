"""Shrinking a failing schedule: fewest preemptions first, then fewest steps, then fewest
actors, keeping the same violation (``replay.violation_key``: its kind and its message with
the numbers masked).

A schedule is rewritten as what made it: the **preemptions** (a switch away from an actor
that could have gone on; the timer pseudo-actor's steps aside), each keyed by the label
``(actor, op, n)`` the preempted actor stood at and naming the actor switched to, and, for
every other switch, the **order** in which the original took its labels. The ``Directed``
strategy runs such a plan: the running actor goes on while it can (run-to-block) unless a
preemption is keyed on its label; when it cannot, the runnable actor whose label the
original took first goes next. With every preemption of the original it replays the
original step for step; the shrinker edits the plan and keeps an edit when a run of it
ends in the same violation with (preemptions, steps, actors) no greater, lexicographically:

| pass                 | edit                                                          | keeps if |
|----------------------|---------------------------------------------------------------|----------|
| remove preemptions   | none; only one (latest first); only the last 2, 4, 8...;     | not worse |
|                      | then delta debugging (ddmin) over the set of preemptions: the |          |
|                      | preempted actor runs on instead                               |          |
| move a preemption    | one step earlier or later in the preempted actor: the steps  | better   |
|                      | in between change order, tried only when they are            |          |
|                      | independent (``accesses.dependent`` over the steps' recorded |          |
|                      | accesses; no conflicting pair)                               |          |
| defer an actor       | an actor stepping after the first preemption is chosen only  | better   |
|                      | when nobody else can run (actors are the scenario's: "fewest |          |
|                      | actors" counts those that step from the first preemption on) |          |

The passes repeat until none improves or the budget of replays is spent. Every run is a
pure function of the plan, so the shrunk schedule is an ordinary decision list that a
strict replay reproduces bit for bit.
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import trio

from ..errors import EmuError
from .accesses import StepAccesses, dependent
from .controller import TIMER, Actor, Controller
from .replay import violation_key
from .runner import RunResult, prepare, run_schedule
from .strategies import Label, Labels, Replay, labelled

BUDGET = 200
"""Replays one shrink may spend (each is one run of the scenario)."""

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

    async def run(self, strategy: Labels) -> RunResult | None:
        """One replay; None when it is invalid or the budget is spent."""
        if self.replays >= self.budget:
            return None
        self.replays += 1
        o = self.original
        try:
            return await run_schedule(self.sc, self.values, self.quirks, strategy, o.seed,
                                      o.max_steps, o.release, accesses=True)
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
        n = 2
        while len(items) >= 2 and self.replays < self.budget:
            chunk = math.ceil(len(items) / n)
            for start in range(0, len(items), chunk):
                rest = items[:start] + items[start + chunk:]
                got = await self.attempt(best, order, rest, deferred, strict=False)
                if got is not None:
                    best, items, n = got, rest, max(n - 1, 2)
                    break
            else:
                if n >= len(items):
                    break
                n = min(2 * n, len(items))
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

    async def shrink(self) -> Shrunk:
        o = self.original
        replay = Replay(o.decisions)
        result = await self.run(replay)
        if result is None or result.trace_hash != o.trace_hash:
            whole = (0, o.steps, 0)
            return Shrunk(o, o, whole, whole, self.replays,
                          "the schedule does not replay, so it was not shrunk")
        start = best = _Best(result, replay, size(result, replay))
        deferred: frozenset[str] = frozenset()
        while self.replays < self.budget:
            best = await self.remove(best, deferred)
            moved = await self.move(best, deferred)
            if moved is not None:
                best = moved
                continue
            narrowed = await self.defer(best, deferred)
            if narrowed is None:
                break
            best, deferred = narrowed
        shrunk = attrs.evolve(best.result, strategy=o.strategy)
        return Shrunk(o, shrunk, start.size, best.size, self.replays)


def _run_end(labels: list[Label], start: int) -> int:
    """The end of the run of consecutive steps of one actor that begins at ``start``."""
    end = start
    while end < len(labels) and labels[end][0] == labels[start][0]:
        end += 1
    return end


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
