"""Coverage: what a hunt exercised, and the "sometimes" goals it had to reach.

A schedule run with coverage on (``hunt(..., coverage=True)``, ``emu hunt --coverage``)
collects *items*, each a ``(kind, key)`` pair of plain strings. Model code reports an item
where it happens, in one line (``coverage.current.cover(kind, key)``, or ``Machine.cover``):
a set insertion, outside the trace and its hash, and a no-op method call when coverage is off.

| kind              | key                                  | reported by                         |
|-------------------|--------------------------------------|-------------------------------------|
| gfn-table         | ``Secure|share``: state, operation   | seed-000 GFN table (kvm/lifecycle)  |
| vm-table          | ``Transient|INIT_DONE``              | seed-000 VM table (kvm/lifecycle)   |
| hcall-rc          | ``H_SVM_PAGE_IN|H_BUSY``             | the HV's hcall return (kvm/hv)      |
| return-code       | ``UV_SHARE_PAGE|H_PARAMETER``        | every code a guest or QEMU receives |
| nested-transition | ``live --put_nested--> live``        | kvm/nested (its life-cycle table)   |
| pkvm-transition   | ``A -> B``: rows of the state table  | pkvm/invariants (``PageRows``)      |
| race              | what overlapped (``Machine.racing``) | kvm/uvmem, kvm/hv: what goals name  |
| event             | a situation a goal names             | kvm/radix_entry, actors/nested_cpu  |
| conflict          | ``opA ~ opB``                        | the access relation (below)         |

**The universe.** The model or the scenario *declares* the items a scenario can cover
(``declare``): every cell of the seed-000 tables, the return codes a scenario accepts, the
transitions of a state table. The report names what was not reached, each with a reason:
the one declared with it (an N/A cell), else, for a key ``A|B``, what the reached keys say of
its halves: "A occurs, never with B", or "neither A nor B occurs in this hunt" (the scenario
never issues that call, never reaches that state).

**Goals** ("sometimes" assertions, as Antithesis and P's liveness monitors have them): a
scenario declares situations that must occur at least once in a hunt (``Machine.goal``),
each as ordered stages, every stage an item. A schedule's progress on a goal is the number
of its leading stages covered, so a hunt that never reaches a goal still reports the best
partial progress, and in which schedule. ``--require-coverage`` fails a hunt that left a
goal unreached.

**Conflicting access pairs** (kind ``conflict``): the pairs of operation labels (the step
labels, numbers folded to ``#``) whose steps touched a common object, one of them writing,
from different actors. They need the access relation (``sim.accesses``), so a schedule with
coverage on records accesses; that costs (a hunt runs at about half its speed) and is why
coverage is off unless asked for. The checks' own bookkeeping (``check:``) and virtual time
are left out.

Coverage never feeds a decision: the recorder is written, never read, while a schedule runs
(so a schedule's trace hash is the same with coverage on or off), and a ``Coverage`` is
small and pickles (results cross a pipe with ``--workers``).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import attrs

from .accesses import CHECK, StepAccesses
from .controller import CLOCK, Controller, _await_chain
from .files import write_atomic

Item = tuple[str, str]
"""(kind, key)."""

CONFLICT = "conflict"
RACE = "race"
EVENT = "event"


@attrs.frozen
class Stage:
    """One stage of a goal: the item that marks it, and what it means."""

    about: str
    item: Item


@attrs.frozen
class Goal:
    """A situation a hunt must reach at least once, in ordered stages."""

    name: str
    about: str
    stages: tuple[Stage, ...]

    def progress(self, items: frozenset[Item] | set[Item]) -> int:
        """How many leading stages ``items`` covers (``len(stages)``: reached)."""
        n = 0
        for stage in self.stages:
            if stage.item not in items:
                break
            n += 1
        return n

    def stage_text(self, n: int) -> str:
        return "nothing" if n == 0 else f"stage {n}/{len(self.stages)}: " \
            f"{self.stages[n - 1].about}"


class Recorder:
    """The items, declarations and goals of the schedule running now. ``on`` false: every
    method does nothing (``OFF``)."""

    __slots__ = ("goals", "items", "on", "universe")

    def __init__(self, on: bool = False) -> None:
        self.on = on
        self.items: set[Item] = set()
        self.universe: dict[Item, str] = {}
        """Declared item -> the reason it may stay unreached ("" if none is known)."""
        self.goals: dict[str, Goal] = {}

    def cover(self, kind: str, key: str) -> None:
        if self.on:
            self.items.add((kind, key))

    def declare(self, kind: str, keys: Iterable[str], reason: str = "") -> None:
        """``keys`` of ``kind`` can be covered by this scenario; ``reason``: why one may
        stay unreached (an N/A cell). The first reason declared for an item stays."""
        if self.on:
            for key in keys:
                self.universe.setdefault((kind, key), reason)

    def goal(self, goal: Goal) -> None:
        """Declare ``goal``; its stages' items join the universe."""
        if self.on:
            if goal.name in self.goals:
                raise ValueError(f"two goals named {goal.name!r}")
            self.goals[goal.name] = goal
            for i, stage in enumerate(goal.stages, 1):
                self.universe.setdefault(stage.item, f"stage {i} of goal {goal.name}, "
                                                     "never reached")


OFF = Recorder()
"""The recorder in force when coverage is off: never on."""

current: Recorder = OFF
"""The recorder of the schedule running now (``Machine.coverage`` while it runs, else
``OFF``); model code without the machine at hand reports through it:
``coverage.current.cover("nested-transition", key)``."""


@attrs.frozen
class Coverage:
    """One schedule's coverage (``RunResult.coverage``): small, picklable."""

    items: frozenset[Item]
    universe: tuple[tuple[str, str, str], ...]
    """(kind, key, reason) of every declared item, sorted."""
    goals: tuple[Goal, ...]


def take(recorder: Recorder, steps: Sequence[tuple[int, str]],
         step_accesses: Sequence[StepAccesses]) -> Coverage:
    """The schedule's coverage: the recorder's items plus the conflicting pairs of its
    steps (``steps``: (actor index, label) of step ``i`` at index ``i - 1``)."""
    items = set(recorder.items)
    items.update((CONFLICT, pair) for pair in conflicts(steps, step_accesses))
    universe = tuple(sorted((k, key, why) for (k, key), why in recorder.universe.items()))
    return Coverage(frozenset(items), universe,
                    tuple(recorder.goals[name] for name in sorted(recorder.goals)))


_NUMBER = re.compile(r"0x[0-9a-fA-F]+|\d+")


def mask_numbers(text: str) -> str:
    """``text`` with every number folded to ``#`` (``qemu reads GFN 0x105`` -> ``qemu reads
    GFN #``): a step label that names an operation, not its operands; a violation message
    that names a kind of finding (``replay.violation_key``)."""
    return _NUMBER.sub("#", text)


def conflicts(steps: Sequence[tuple[int, str]],
              step_accesses: Sequence[StepAccesses]) -> set[str]:
    """The pairs ``"a ~ b"`` (sorted labels) of steps of different actors that touched a
    common object, one writing it: each access is paired with the last write before it and,
    for a write, with the reads since that write. (Only sets are built: no order of theirs
    reaches the result.)"""
    pairs: set[tuple[str, str]] = set()
    last_write: dict[str, tuple[int, str]] = {}
    readers: dict[str, set[tuple[int, str]]] = {}
    labels: dict[str, str] = {}

    def pair(actor: int, label: str, other: tuple[int, str]) -> None:
        if other[0] != actor:
            pairs.add((label, other[1]) if label <= other[1] else (other[1], label))

    for (actor, op), acc in zip(steps, step_accesses, strict=False):
        label = labels.get(op)
        if label is None:
            label = labels[op] = mask_numbers(op)
        me = (actor, label)
        for name in acc.reads:
            if name in acc.writes or name.startswith(CHECK) or name == CLOCK:
                continue
            if name in last_write:
                pair(actor, label, last_write[name])
            readers.setdefault(name, set()).add(me)
        for name in acc.writes:
            if name.startswith(CHECK) or name == CLOCK:
                continue
            if name in last_write:
                pair(actor, label, last_write[name])
            for reader in readers.pop(name, ()):
                pair(actor, label, reader)
            last_write[name] = me
    return {f"{a} ~ {b}" for a, b in pairs}


def inside(ctl: Controller, functions: Sequence[str], match: dict[str, Any]) -> bool:
    """Is an actor other than the current one inside ``functions`` (model functions on its
    stack, outermost first, each called, directly or not, by the one before; a name or a
    qualified name such as ``Ultravisor.share``), the innermost of them with the local
    values ``match`` (any frame of that function, the outermost that matches)? A walk of
    every parked actor's coroutine chain: for coverage only, never for a decision."""
    last = len(functions) - 1
    for actor in ctl.live:
        if actor is ctl.current or actor.task is None:
            continue
        want = 0
        for frame in _await_chain(actor, False):
            code = frame.f_code
            if functions[want] not in (code.co_name, code.co_qualname):
                continue
            if want < last:
                want += 1
            elif all(frame.f_locals.get(name) == value for name, value in match.items()):
                return True
    return False


# --------------------------------------------------------------------------- a hunt's


@attrs.define
class HuntCoverage:
    """The coverage of one hunt of one scenario (``HuntResult.coverage``): per item, the
    first schedule (seed) that reached it and how many did; per goal, the best progress and
    the first schedule that made it."""

    scenario: str
    seed: int
    schedules: int = 0
    first: dict[Item, int] = attrs.Factory(dict)
    count: dict[Item, int] = attrs.Factory(dict)
    universe: dict[Item, str] = attrs.Factory(dict)
    goals: dict[str, Goal] = attrs.Factory(dict)
    best: dict[str, tuple[int, int]] = attrs.Factory(dict)
    """Goal -> (best progress, the first seed that made it): every goal of ``goals``."""
    unit: str = "seed"
    """What ``first`` and ``best`` count: seeds, or (a suite's, ``merge``) schedules."""

    def add(self, seed: int, cov: Coverage) -> None:
        """Schedule ``seed``'s coverage (schedules are added in seed order)."""
        self.schedules += 1
        for item in cov.items:
            if item not in self.first:
                self.first[item] = seed
            self.count[item] = self.count.get(item, 0) + 1
        for kind, key, why in cov.universe:
            self.universe.setdefault((kind, key), why)
        for goal in cov.goals:
            self.goals.setdefault(goal.name, goal)
            got = goal.progress(cov.items)
            if got > self.best.get(goal.name, (-1, 0))[0]:
                self.best[goal.name] = (got, seed)

    def unmet(self) -> list[str]:
        """The goals never reached, by name."""
        return [name for name in sorted(self.goals)
                if self.best[name][0] < len(self.goals[name].stages)]

    def table(self) -> str:
        """The coverage table (``emu hunt --coverage`` prints it)."""
        return Report([self]).table()


def reason(item: Item, declared: str, reached: Iterable[Item]) -> str:
    """Why ``item`` was not reached: its declared reason, else what the reached items of its
    kind say of the two halves of its key ``A|B`` (a state and an operation, a call and a
    code): "no A or B in this hunt", "A occurs, never with B"..."""
    if declared:
        return declared
    kind, key = item
    head, sep, tail = key.partition("|")
    if not sep:
        return "no schedule of this hunt took it"
    mine = [k.partition("|") for c, k in reached if c == kind]
    seen_head = any(h == head for h, _, _ in mine)
    seen_tail = any(t == tail for _, _, t in mine)
    if seen_head and seen_tail:
        return f"{head} and {tail} both occur, never together"
    if seen_head or seen_tail:
        one, other = (head, tail) if seen_head else (tail, head)
        return f"{one} occurs, never with {other}"
    return f"neither {head} nor {tail} occurs in this hunt"


def _kinds(h: HuntCoverage) -> list[str]:
    return sorted({k for k, _ in h.universe} | {k for k, _ in h.first})


def summary(h: HuntCoverage, title: str, show_conflicts: int = 10) -> list[str]:
    """The coverage table of ``h``, in lines."""
    lines = [f"coverage of {title}: {h.schedules} schedules"]
    for kind in _kinds(h):
        declared = sorted(key for k, key in h.universe if k == kind)
        reached = sorted(key for k, key in h.first if k == kind)
        if declared:
            hit = [key for key in declared if (kind, key) in h.first]
            extra = len(set(reached) - set(declared))
            more = f" (+{extra} not declared)" if extra else ""
            lines.append(f"  {kind}: {len(hit)}/{len(declared)} reached{more}")
            for key in declared:
                if (kind, key) not in h.first:
                    why = reason((kind, key), h.universe[(kind, key)], h.first)
                    lines.append(f"    not reached: {key}: {why}")
        else:
            lines.append(f"  {kind}: {len(reached)} reached (no universe declared)")
            if kind == CONFLICT:
                top = sorted(reached, key=lambda k: (-h.count[(kind, k)], k))[:show_conflicts]
                lines.extend(f"    {key} ({h.count[(kind, key)]} schedules)" for key in top)
    for name in sorted(h.goals):
        goal = h.goals[name]
        got, seed = h.best[name]
        if got == len(goal.stages):
            lines.append(f"  goal {name}: REACHED (first in {h.unit} {seed}): {goal.about}")
        else:
            where = f" ({h.unit} {seed})" if got else ""
            lines.append(f"  goal {name}: NOT REACHED, best {goal.stage_text(got)}{where}: "
                         f"{goal.about}")
    return lines


def merge(hunts: Sequence[HuntCoverage]) -> HuntCoverage:
    """The coverage of a suite: every item reached by any hunt (its first seed is the
    schedule's index across the suite, hunts in order), the universes united, each goal's
    best over the hunts that declare it."""
    merged = HuntCoverage("suite", 0, unit="schedule")
    offset = 0
    for h in hunts:
        for item, seed in sorted(h.first.items()):
            merged.first.setdefault(item, offset + seed - h.seed)
            merged.count[item] = merged.count.get(item, 0) + h.count[item]
        for item, why in h.universe.items():
            if merged.universe.get(item, "") == "":
                merged.universe[item] = why
        for name, goal in h.goals.items():
            merged.goals.setdefault(name, goal)
            got, seed = h.best[name]
            if got > merged.best.get(name, (-1, 0))[0]:
                merged.best[name] = (got, offset + seed - h.seed)
        offset += h.schedules
        merged.schedules += h.schedules
    return merged


def to_json(h: HuntCoverage) -> dict[str, Any]:
    kinds: dict[str, Any] = {}
    for kind in _kinds(h):
        keys = sorted({key for k, key in h.universe if k == kind}
                      | {key for k, key in h.first if k == kind})
        rows = []
        for key in keys:
            item = (kind, key)
            row: dict[str, Any] = {"key": key, "declared": item in h.universe}
            if item in h.first:
                row.update(first=h.first[item], schedules=h.count[item])
            else:
                row["reason"] = reason(item, h.universe.get(item, ""), h.first)
            rows.append(row)
        declared = [r for r in rows if r["declared"]]
        kinds[kind] = {"reached": sum("first" in r for r in rows),
                       "declared": len(declared),
                       "declared_reached": sum("first" in r for r in declared),
                       "items": rows}
    goals = []
    for name in sorted(h.goals):
        goal = h.goals[name]
        got, seed = h.best[name]
        goals.append({"name": name, "about": goal.about, "reached": got == len(goal.stages),
                      "best_stage": got, "stages": [s.about for s in goal.stages],
                      "best_at": seed if got else None})
    return {"scenario": h.scenario, "seed": h.seed, "schedules": h.schedules, "unit": h.unit,
            "kinds": kinds, "goals": goals}


@attrs.define
class Report:
    """The coverage of a hunt or a suite of hunts: per scenario and merged."""

    hunts: list[HuntCoverage]
    merged: HuntCoverage = attrs.field(init=False)
    """The suite's coverage (``merge``), made once for the table, the JSON and the plot."""

    def __attrs_post_init__(self) -> None:
        self.merged = self.hunts[0] if len(self.hunts) == 1 else merge(self.hunts)

    def unmet(self) -> list[tuple[str, str]]:
        """(scenario, goal) of every goal a hunt declared and never reached."""
        return [(h.scenario, name) for h in self.hunts for name in h.unmet()]

    def table(self) -> str:
        lines: list[str] = []
        for h in self.hunts:
            lines += summary(h, f"{h.scenario} ({h.unit}s {h.seed}..{h.seed + h.schedules - 1})")
        if len(self.hunts) > 1:
            lines += summary(self.merged, f"the suite, merged ({len(self.hunts)} scenarios)")
        return "\n".join(lines)

    def json(self) -> dict[str, Any]:
        return {"format": 1, "scenarios": [to_json(h) for h in self.hunts],
                "merged": to_json(self.merged)}

    def save_json(self, path: str | Path) -> Path:
        return write_atomic(path, json.dumps(self.json(), indent=1) + "\n")

    def curves(self) -> dict[str, tuple[list[int], int]]:
        """Per kind, the items covered after each schedule of the suite (hunts in order),
        and how many its universe declares (0: none); a kind with a universe counts only
        its declared items."""
        merged = self.merged
        curves: dict[str, tuple[list[int], int]] = {}
        for kind in _kinds(merged):
            declared = sum(k == kind for k, _ in merged.universe)
            new = [0] * merged.schedules
            for (k, key), index in merged.first.items():
                if k == kind and (not declared or (k, key) in merged.universe):
                    new[index] += 1
            running, curve = 0, []
            for n in new:
                running += n
                curve.append(running)
            curves[kind] = (curve, declared)
        return curves

    def plot(self, path: str | Path) -> Path:
        """Draw coverage over the schedules (matplotlib, Agg): above, the share of each
        declared universe reached; below, the items of the kinds without one."""
        import matplotlib
        if "matplotlib.pyplot" not in sys.modules:
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        path = Path(path)
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
        for kind, (curve, declared) in self.curves().items():
            xs = range(1, len(curve) + 1)
            if declared:
                top.plot(xs, [100 * n / declared for n in curve],
                         label=f"{kind} ({curve[-1]}/{declared})")
            else:
                bottom.plot(xs, curve, label=f"{kind} ({curve[-1]})")
        offset = 0
        for h in self.hunts[:-1]:
            offset += h.schedules
            for ax in (top, bottom):
                ax.axvline(offset + 0.5, color="grey", linewidth=0.5)
        names = ", ".join(h.scenario for h in self.hunts)
        what = names if len(names) < 70 else f"a suite of {len(self.hunts)} scenarios"
        top.set_title(f"coverage over schedules: {what}")
        top.set_ylabel("declared items reached (%)")
        bottom.set_ylabel("distinct items (no universe)")
        bottom.set_xlabel("schedules (hunts in order, a line between two)"
                          if len(self.hunts) > 1 else "schedules")
        for ax in (top, bottom):
            if ax.lines:
                ax.legend(fontsize="small", loc="lower right")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path
