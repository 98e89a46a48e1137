"""Why a schedule fails: how the chance of its violation grows along the schedule, the
step from which it is certain, and the nearest schedule that passes.

**The curve.** For a prefix of ``k`` decisions of the failing schedule (``k = 0`` is
nothing chosen yet), ``runs`` fresh continuations each replay the prefix and go on with a
random walk (seeds ``0 .. runs-1``, timers as choices); the point is the fraction that end
in the same violation (``replay.violation_key``: its kind and its message, numbers
masked). The violation becomes **inevitable** at the smallest sampled ``k`` from which
every sampled point is 1: after step ``k`` no continuation escapes it. When prefixes times
runs exceed the ``budget`` of runs, only every ``stride``-th prefix is sampled (the last
one always), and the report says so.

**The nearest passing schedule** reverses one conflicting pair ``(i, j)``: step ``j``
moves before step ``i`` together with the steps between them that it depends on (its own
actor's, and those conflicting with a step already moved, transitively), the rest keeping
their order; when that would move a step of ``i``'s actor, step ``i`` moves after ``j``
with the steps depending on it instead. The new order is run by label
(``strategies.Tolerant``, which realigns where the reversal changed what actors do, then
walks at random from the file's seed). Pairs are tried in order: the deciding pair
(``explain.deciding_pair``), the other pairs on the objects the violation names, then any
pair, each group latest first, at most ``tries`` runs; the first run with no violation at
all is the nearest passing schedule, shown from its first divergence (the first step
where its decisions differ from the failing schedule's).
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import trio

from ..errors import EmuError
from . import explain
from .accesses import StepAccesses, conflicts, dependent
from .controller import Actor, Controller
from .explain import Pair, deciding_pair, pair_lines, searched, step_text
from .replay import violation_key
from .runner import RunResult, prepare, run_schedule
from .strategies import RandomWalk, Replay, Tolerant, labelled

RUNS = 20
"""Continuations per sampled prefix."""
BUDGET = 2000
"""Continuations in all, at most: beyond, prefixes are sampled every ``stride`` steps."""
TRIES = 40
"""Reversed pairs tried, at most, for the nearest passing schedule."""
SHOWN = 30
"""Steps of the nearest passing schedule shown, from its first divergence."""
COUNTER = "P(violation) after the prefix"
"""The name of the curve's Perfetto counter track."""


class Continue(Replay):
    """Replay a prefix of a decision list, then go on with ``then``."""

    def __init__(self, prefix: list[tuple[int, str, str]], then: RandomWalk) -> None:
        super().__init__(prefix)
        self.then = then

    def choose(self, enabled: list[Actor], ctl: Controller) -> Actor:
        if ctl.step < len(self.decisions):
            return super().choose(enabled, ctl)
        return self.took(self.then.choose(enabled, ctl), enabled, ctl)


@attrs.frozen
class Point:
    prefix: int
    """Decisions replayed before the random continuation (0: none)."""
    hits: int
    runs: int

    @property
    def p(self) -> float:
        return self.hits / self.runs


@attrs.frozen
class Passing:
    """The nearest passing schedule: ``pair`` reversed, run as ``result``."""

    pair: Pair
    moved: tuple[int, ...]
    """The steps moved (before ``pair.first``, or after ``pair.second`` when ``after``)."""
    after: bool
    result: RunResult
    divergence: int
    """The first step whose decision differs from the failing schedule's."""
    tries: int


@attrs.frozen
class Why:
    result: RunResult
    """The failing schedule, re-run with its accesses recorded."""
    curve: list[Point]
    stride: int
    pair: Pair | None
    passing: Passing | None
    tries: int
    """Reversals run in search of a passing schedule."""

    @property
    def inevitable(self) -> int | None:
        """The smallest sampled prefix from which every sampled point is 1."""
        found = None
        for point in reversed(self.curve):
            if point.hits < point.runs:
                break
            found = point.prefix
        return found

    def counter(self) -> list[tuple[int, float]]:
        """The curve as (step, value): the point of prefix ``k`` stands where step ``k``
        ends (logical time ``k + 1``, as ``perfetto`` places steps)."""
        return [(pt.prefix + 1, pt.p) for pt in self.curve]

    def report(self) -> str:
        r = self.result
        runs = self.curve[0].runs if self.curve else 0
        sampled = ("every prefix" if self.stride == 1 else
                   f"one prefix in {self.stride} and the last: a budget of {BUDGET} runs")
        lines = [f"why: P(the same violation) after each prefix of the {r.steps}-step "
                 f"schedule, {runs} random continuations each ({sampled}; a row where the "
                 "value changes):"]
        decisions = r.decisions
        shown = [pt for n, pt in enumerate(self.curve)
                 if n in (0, len(self.curve) - 1) or pt.hits != self.curve[n - 1].hits]
        for pt in shown:
            bar = "#" * round(20 * pt.p)
            step = (f"after step {pt.prefix:>4} {decisions[pt.prefix - 1][1]}: "
                    f"{decisions[pt.prefix - 1][2]}" if pt.prefix else "before step    1")
            lines.append(f"  {pt.p:5.2f} {bar:<20} {step[:70]}")
        k = self.inevitable
        if k is None:
            lines.append("inevitable: never within the sampled prefixes")
        elif k == 0:
            lines.append("inevitable from the start: every continuation sampled fails")
        else:
            requests = r.trace.requests() if r.trace.where else {}
            earlier = (f"; it may be up to {self.stride - 1} step(s) earlier, between the "
                       "prefixes sampled" if self.stride > 1 else "")
            lines += [f"inevitable after {step_text(r, k, requests)}:",
                      f"  every continuation sampled from there fails ({r.steps - k} more "
                      f"step(s) in the schedule{earlier})"]
        lines.append("")
        lines += self._passing_lines()
        return "\n".join(lines)

    def _passing_lines(self) -> list[str]:
        ps = self.passing
        if ps is None:
            return [f"nearest passing schedule: none found reversing one conflicting pair "
                    f"({self.tries} tried)"]
        how = (f"step {ps.pair.first} moved after step {ps.pair.second}" if ps.after else
               f"step {ps.pair.second} moved before step {ps.pair.first}")
        moved = len(ps.moved) - 1
        with_ = "" if not moved else (f" with {moved} step(s) that depend on it" if ps.after
                                      else f" with {moved} step(s) it depends on")
        r = ps.result
        lines = [f"nearest passing schedule ({ps.tries} reversal(s) run): the pair",
                 *pair_lines(self.result, ps.pair),
                 f"reversed ({how}{with_}): {r.steps} steps, "
                 f"{'clean' if r.ok else r.violation.describe()}, trace hash {r.trace_hash}; "
                 f"first divergence at step {ps.divergence}:"]
        lines.append(r.trace.timeline(min(r.steps - ps.divergence + 1, SHOWN)))
        return lines


def _reversal(actors: list[str], steps: list[StepAccesses], i: int, j: int
              ) -> tuple[list[int], tuple[int, ...], bool] | None:
    """The order (indices) with step index ``j`` before ``i`` (module docstring), the
    steps moved and whether ``i`` moved after instead; None when neither is possible."""
    moved = [j]
    for k in range(j - 1, i, -1):
        if any(actors[k] == actors[m] or dependent(steps[k], steps[m]) for m in moved):
            moved.append(k)
    if all(actors[k] != actors[i] for k in moved):
        block = sorted(moved)
        rest = [k for k in range(i, j + 1) if k not in moved]
        return [*range(i), *block, *rest, *range(j + 1, len(actors))], tuple(block), False
    moved = [i]
    for k in range(i + 1, j):
        if any(actors[k] == actors[m] or dependent(steps[k], steps[m]) for m in moved):
            moved.append(k)
    if any(actors[k] == actors[j] for k in moved):
        return None
    rest = [k for k in range(i, j + 1) if k not in moved]
    return [*range(i), *rest, *moved, *range(j + 1, len(actors))], tuple(moved), True


def _candidates(result: RunResult, first: Pair | None) -> list[Pair]:
    """Conflicting pairs of different actors, at or before the violation, within the steps
    ``explain.searched`` gives: ``first``, those on the objects the violation names, then
    the others, each group latest first (enough of them for ``TRIES``)."""
    steps = result.accesses or []
    actors = [name for _, name, _ in result.decisions]
    start, end, seconds = searched(result)
    about = explain.about(result, {n for s in steps[:end] for n in s.reads | s.writes})
    on_object: list[Pair] = []
    others: list[Pair] = []
    for j in seconds:
        for i in range(j - 1, start - 1, -1):
            if actors[i] == actors[j]:
                continue
            on = conflicts(steps[i], steps[j])
            if not on:
                continue
            pair = Pair(i + 1, j + 1, tuple(sorted(on, key=lambda o: (o not in about, o))),
                        bool(about & set(on)))
            (on_object if pair.about else others).append(pair)
        if len(on_object) + len(others) >= 4 * TRIES:
            break
    if first is None:
        return on_object + others
    return [first] + [p for p in on_object + others if (p.first, p.second) !=
                      (first.first, first.second)]


async def _why(result: RunResult, runs: int, budget: int, tries: int) -> Why:
    sc, values, quirks = prepare(result.scenario, result.params, result.quirks, result.release)
    key = violation_key(result.violation)
    decisions = result.decisions

    async def one(strategy: Any) -> RunResult:
        return await run_schedule(sc, values, quirks, strategy, result.seed,
                                  result.max_steps, result.release)

    n = len(decisions)
    stride = max(1, math.ceil((n + 1) * runs / max(budget, runs)))
    prefixes = sorted({*range(0, n + 1, stride), n})
    curve = []
    for k in prefixes:
        hits = 0
        for seed in range(runs):
            got = await one(Continue(decisions[:k], RandomWalk(seed, timers=True)))
            hits += violation_key(got.violation) == key
        curve.append(Point(k, hits, runs))
    pair = deciding_pair(result)
    actors = [name for _, name, _ in decisions]
    steps = result.accesses or []
    labels = labelled(decisions)
    ran = 0
    for cand in _candidates(result, pair):
        if ran >= tries:
            break
        order = _reversal(actors, steps, cand.first - 1, cand.second - 1)
        if order is None:
            continue
        indices, moved, after = order
        ran += 1
        follow = Tolerant([decisions[k] for k in indices], RandomWalk(result.seed, timers=True))
        got = await one(follow)
        if got.ok:
            mine = labelled(got.decisions)
            divergence = next((s + 1 for s, (a, b) in enumerate(zip(mine, labels, strict=False))
                               if a != b), min(len(mine), len(labels)) + 1)
            passing = Passing(cand, tuple(k + 1 for k in moved), after, got, divergence, ran)
            return Why(result, curve, stride, pair, passing, ran)
    return Why(result, curve, stride, pair, None, ran)


def why(result: RunResult, runs: int = RUNS, budget: int = BUDGET, tries: int = TRIES) -> Why:
    """Explain why ``result`` (a failing schedule with its accesses recorded, as a replay
    returns it) fails: the curve, where it becomes inevitable, the nearest passing
    schedule (module docstring)."""
    if result.violation is None:
        raise EmuError("--why needs a schedule that found a violation")
    if result.accesses is None:
        raise EmuError("--why needs the schedule's accesses (a strict replay records them)")
    if runs < 1:
        raise EmuError(f"bad number of continuations {runs} (at least 1)")
    return trio.run(_why, result, runs, budget, tries)
