"""Bounded exhaustive search: every schedule with at most K preemptions, depth first.

A *preemption* is a decision that switches away from the candidate that took the previous
step while that candidate could still take another. Switching away from one that blocked,
finished, or whose next step is a yield (``yield_point``: it asks to let the others run) is
free. The controller's timer pseudo-actor is a candidate like any actor: choosing it while
the running actor could go on is a preemption, and after a timer step, switching away
from the timer is one only while another timer is pending. (Firing when no actor can run is
forced, not a decision, and costs nothing.)

The search is stateless (CHESS, loom): every schedule is a fresh run of the scenario inside
one ``trio.run``, steered by ``Explorer`` through a stack of decision nodes:

=========  ==============================================================================
phase      what the strategy does at decision i
=========  ==============================================================================
replay     i is on the stack: choose the node's ``chosen`` (the candidates must be the
           same as when the node was made: a scenario that differs is not deterministic)
extend     past the stack: push a node; choose the previous candidate if it may go on,
           after a yield the next candidate round-robin, else the first; without the
           reduction every other candidate within the bound (and awake) becomes a
           backtrack point (``todo``); with it, only the races of the run add them (below)
backtrack  after the run: the deepest node with a ``todo`` takes its next candidate and
           the nodes below it are dropped; none left: the space is exhausted
=========  ==============================================================================

Past half the step budget (the controller's ``fair`` suffix) a node branches no more and
the choice is round-robin, preemptions allowed, so a schedule that reaches the budget
livelocks under a fair continuation (the controller's liveness rule) and an actor retrying
in a loop cannot deepen the tree without end: the search is exhaustive over the unfair
prefix. Before that, an actor at a yield gives way while another can run (``Node.allows``;
CHESS's fair search, Musuvathi and Qadeer, PLDI 2008): a spinner spinning again at once
repeats a state, and without the rule every race in its loop would plan one more turn.

**The reduction** skips schedules that only reorder independent steps (two steps are
dependent when they touch a common object and one of them writes it:
``accesses.dependent``; a step that stops where it may block also reads what it waits for,
so a release is dependent on the arrival it unblocks). It is source-DPOR (Abdulla, Aronis,
Jonsson and Sagonas, POPL 2014) with sleep sets, bounded as Coons, Musuvathi and McKinley
(OOPSLA 2013) do:

- *DPOR* (``races``): a node branches only where the run just done has a race: a step
  dependent on an earlier step of another actor with no step ordered between them. The
  earlier step's node then explores a way to run the later one first (one of the
  *initials* of what follows it, unless one is explored already); a race that cannot be
  reversed (the later actor was woken by the earlier step) adds nothing. With a bound, a
  switch the bound forbids at that node may be affordable where the earlier actor's run of
  steps began, so it is planned there too.
- *Sleep sets* (Godefroid): after the child of a node through candidate p has been
  explored, p *sleeps* in the later children of that node, and stays asleep down the tree
  until a step dependent on p's step runs; a run whose every allowed candidate sleeps ends
  there, cut short (``pruned``) after the invariants have seen the state it reached. With
  the bound, an explored sibling p sleeps in the sibling q only when running p first costs
  no more preemptions than running q first (p was the running actor, or p's step blocks or
  ends it: ``Node.sleeps_in``).

Both are only as sound as the accesses are complete (every piece of shared state reports
itself); ``--no-prune`` is the cross-check, and the tests compare verdicts and final states
with and without the reduction. A timer step writes virtual time (``clock``, which a sleep
and every read of ``Machine.now`` touch); a timer that fires unasked (nobody else can run)
is no step, so an actor it woke is reached by planning the timer's step instead; a step
that ended in a violation is dependent on everything. What is left redundant: under the
bound the sleep sets are weak and both planting points are explored, so equivalent
schedules recur (nested-boot ``-p touch=false``, K=1: 1,577 runs for 580 distinct traces);
wakeup trees (optimal DPOR) would remove that.

The space is estimated before the search from its first schedule (n decisions, a
candidates): sum over c <= K of C(n, c) * (a + c)!, Musuvathi and Qadeer's bound (PLDI
2007), an upper bound if no schedule takes more than n decisions and no actor yields
(a switch at a yield is free: retry loops add schedules beyond it).

``--checkpoint FILE`` saves the stack (JSON) every ``CHECKPOINT_EVERY`` runs and when the
search stops early; a search started with an existing checkpoint resumes from it.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import trio

from ..errors import EmuError
from .accesses import StepAccesses, dependent
from .controller import CLOCK, TIMER
from .coverage import HuntCoverage
from .files import read_bounded, write_atomic
from .interrupt import INTERRUPT, Interrupted
from .runner import RunResult, prepare, run_schedule, step_budget

if TYPE_CHECKING:
    from .controller import Actor, Controller

CHECKPOINT_FORMAT = "emu-explore-checkpoint"
CHECKPOINT_VERSION = 2
CHECKPOINT_EVERY = 2000
"""Runs between two checkpoint writes (and one more when the search stops)."""
MAX_CHECKPOINT_BYTES = 512 * 2**20

Accesses = StepAccesses | None
"""A step's accesses; None: unknown, dependent on every step."""


def _dependent(a: Accesses, b: Accesses) -> bool:
    return a is None or b is None or dependent(a, b)


@attrs.define
class Branch:
    """A candidate's step out of a node, once it has run."""

    actor: str
    accesses: Accesses
    stays: bool
    """Switching away right after this step would be a preemption (the actor could go on)."""

    def to_json(self) -> list[Any]:
        acc = self.accesses
        return [self.actor, None if acc is None else [sorted(acc.reads), sorted(acc.writes)],
                self.stays]

    @classmethod
    def from_json(cls, data: list[Any]) -> Branch:
        actor, acc, stays = data
        return cls(actor, None if acc is None else
                   StepAccesses(frozenset(acc[0]), frozenset(acc[1])), stays)


@attrs.define
class Node:
    """One decision of the search."""

    candidates: list[str]
    chosen: str
    todo: list[str]
    """Candidates still to explore here (within the bound, awake)."""
    preemptions: int
    """Preemptions before this decision."""
    prev: str | None
    """The candidate that took the previous step; switching away from it costs one
    preemption unless ``free``."""
    free: bool
    done: list[Branch] = attrs.Factory(list)
    """The children explored so far."""
    sleep: list[Branch] = attrs.Factory(list)
    """Candidates asleep here (inherited from above)."""
    step: Branch | None = None
    """The chosen candidate's step in the current run."""
    fair: bool = False
    """In the fair suffix: the node never branches."""
    yielded: bool = False
    """``prev`` stands at a yield: it gives way to the others here (CHESS's fairness)."""

    def cost(self, actor: str) -> int:
        return 0 if self.free or actor == self.prev else 1

    def allows(self, actor: str, bound: int) -> bool:
        """May the search choose ``actor`` here: within the bound (the fair suffix has
        none), and not an actor giving way at a yield while another can run?"""
        return (self.fair or self.preemptions + self.cost(actor) <= bound) and \
            not (self.yielded and actor == self.prev and len(self.candidates) > 1)

    def sleeps_in(self, b: Branch, q: str) -> bool:
        """The explored child ``b`` may sleep in the child through ``q``: running b first
        and then q costs no more preemptions than running q first, so the schedule it
        stands for is within the bound too."""
        return b.accesses is not None and \
            self.cost(b.actor) + (b.stays and q != b.actor) <= self.cost(q)

    def to_json(self) -> dict[str, Any]:
        return {"candidates": self.candidates, "chosen": self.chosen, "todo": self.todo,
                "preemptions": self.preemptions, "prev": self.prev, "free": self.free,
                "done": [b.to_json() for b in self.done],
                "sleep": [b.to_json() for b in self.sleep], "fair": self.fair,
                "yielded": self.yielded}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Node:
        return cls(list(d["candidates"]), d["chosen"], list(d["todo"]), d["preemptions"],
                   d["prev"], d["free"], [Branch.from_json(b) for b in d["done"]],
                   [Branch.from_json(b) for b in d["sleep"]], fair=d["fair"],
                   yielded=d["yielded"])


class _Pruned(EmuError):
    """Every allowed candidate sleeps: the rest of this run repeats an explored schedule."""


class Explorer:
    """The strategy of one run of the search (see the module docstring)."""

    timer_choices = True

    def __init__(self, stack: list[Node], bound: int, prune: bool) -> None:
        self.stack = stack
        self.bound = bound
        self.prune = prune
        self.wants_accesses = prune
        self.ctl: Controller | None = None

    def spec(self) -> dict[str, Any]:
        return {"name": "explore", "preemptions": self.bound, "timers": True}

    def choose(self, enabled: list[Actor], ctl: Controller) -> Actor:
        self.ctl = ctl
        i = ctl.step
        names = [a.name for a in enabled]
        prev = self.stack[i - 1].chosen if i else None
        # the previous step's actor is at a yield: switching away from it is free
        yielding = ctl.yielder is not None and ctl.yielder.name == prev
        if i:
            self._record(i - 1, prev in names and not yielding)
        if i < len(self.stack):
            node = self.stack[i]
            if node.candidates != names:
                ctl.abort_run(EmuError(
                    f"explore: at step {i + 1} the candidates are {', '.join(names)}, where "
                    f"an earlier run of the same prefix had {', '.join(node.candidates)}: "
                    "the scenario is not deterministic"))
        else:
            node = self._extend(i, names, prev, yielding)
        return enabled[names.index(node.chosen)]

    def _record(self, i: int, stays: bool, ended: bool = False) -> None:
        """Step i is over: keep its accesses and whether its actor could go on."""
        node = self.stack[i]
        accesses: Accesses = None
        if self.prune and not ended:
            accesses = self.ctl.step_accesses[i]
            actor = self.ctl.current
            if actor is not None and actor.name == node.chosen and actor.enabled is not None:
                # It stops at a point it may block at: the step reads what it waits for, so
                # a step that frees that is dependent on it (a release must not move past
                # the arrival it would unblock: that changes which switches are free, and
                # so what the bound lets the search reach: without it, DPOR misses
                # create-race-fails within 2 on nested-boot).
                name = CLOCK if actor.waits_for is None else \
                    getattr(actor.waits_for, "name", None)  # (a sleep waits for the time)
                accesses = StepAccesses(accesses.reads | {name}, accesses.writes) \
                    if isinstance(name, str) else None
        node.step = Branch(node.chosen, accesses, stays)

    def _extend(self, i: int, names: list[str], prev: str | None, yielding: bool) -> Node:
        parent = self.stack[i - 1] if i else None
        preemptions = parent.preemptions + parent.cost(prev) if parent else 0
        sleep: list[Branch] = []
        if parent is not None and self.prune:
            sleep = [b for b in [*parent.sleep, *(b for b in parent.done
                                                   if parent.sleeps_in(b, prev))]
                     if not _dependent(b.accesses, parent.step.accesses)]
        asleep = {b.actor for b in sleep}
        # (the fair suffix is not bounded: see the module docstring)
        fair = self.ctl.fair
        node = Node(names, "", [], preemptions, prev, prev not in names or yielding,
                    sleep=sleep, fair=fair, yielded=yielding)
        allowed = [n for n in names if n not in asleep and node.allows(n, self.bound)]
        if not allowed:
            self.ctl.abort_run(_Pruned("every candidate within the bound sleeps"))
        if yielding or fair:
            # round-robin from the previous candidate: spinners cannot starve the others;
            # past half the step budget the continuation is fair and branches no more
            k = names.index(prev) if prev in names else -1
            first = next(n for n in names[k + 1:] + names[:k + 1] if n in allowed)
        elif prev in allowed:
            first = prev
        else:
            first = allowed[0]
        node.chosen = first
        # with the reduction, backtrack points come from the races of the runs (``races``)
        node.todo = [] if fair or self.prune else [n for n in allowed if n != first]
        self.stack.append(node)
        return node

    def finish(self, steps: int, ended_by_violation: bool) -> None:
        """The run ended after ``steps`` decisions: record the last step."""
        if steps and steps == len(self.stack):
            self._record(steps - 1, False, ended_by_violation)


def advance(stack: list[Node]) -> bool:
    """Move to the next schedule: the deepest node with a backtrack point takes it (one
    asleep there is dropped: it would repeat an explored schedule). False when none is left
    (the space is exhausted)."""
    while stack:
        node = stack[-1]
        asleep = {b.actor for b in node.sleep}
        node.todo = [n for n in node.todo if n not in asleep]
        if node.todo:
            node.done.append(node.step or Branch(node.chosen, None, True))
            node.chosen = node.todo.pop(0)
            node.step = None
            return True
        stack.pop()
    return False


def _covered(node: Node) -> set[str]:
    """The candidates a node has explored, will explore, or has asleep."""
    return {node.chosen, *node.todo, *(b.actor for b in node.done),
            *(b.actor for b in node.sleep)}


def races(stack: list[Node], start: int, bound: int) -> None:
    """Source-DPOR (Abdulla et al., POPL 2014) over the schedule on the stack: for every race
    whose later step is at index ``start`` or beyond, make sure the node of the earlier step
    explores one of the ways to run the later one first.

    Happens-before is program order plus the access relation, kept as vector clocks (entry
    a: one past the index of actor a's latest step that happens before). A race is a pair of
    dependent steps i < j of two actors with no third step ordered between them. Its
    reversal is explored by an *initial* of ``v`` (the steps between i and j that happen
    before j and not after i, then j: what must run before j does): an actor whose first
    step in v happens after no other step of v. If
    no initial is explored, planned or asleep at node i, the first one (j's actor if it is
    one) within the bound becomes a backtrack point. A race is not reversible, and left
    alone, when j's actor was enabled by step i itself or by a step ordered after it (a
    release and the lock it hands over). Bounded POR (Coons, Musuvathi and McKinley,
    OOPSLA 2013): a switch that the bound forbids at node i may be affordable where the
    block of i's actor began, so the initial is also tried there (needed: a schedule that
    switches there spends fewer preemptions and reaches races later in the run that the
    one switching at i cannot)."""
    names = sorted({n for node in stack for n in node.candidates})
    ix = {n: k for k, n in enumerate(names)}
    zero = [0] * len(names)
    clocks: list[list[int]] = []
    actor: list[int] = []
    last_of = [-1] * len(names)
    last_write: dict[str, int] = {}
    readers: dict[str, list[int]] = {}
    barrier = -1  # the latest step of unknown accesses (dependent on every step)
    for j, node in enumerate(stack):
        step = node.step
        if step is None:
            break
        p = ix[step.actor]
        pre = clocks[last_of[p]] if last_of[p] >= 0 else zero
        acc = step.accesses
        preds: set[int] = set()
        if acc is None:
            preds.update(k for k in last_of if k >= 0)
        else:
            for o in acc.writes:
                if o in last_write:
                    preds.add(last_write[o])
                preds.update(readers.get(o, ()))
            for o in acc.reads:
                if o in last_write:
                    preds.add(last_write[o])
        if barrier >= 0:
            preds.add(barrier)
        preds = {d for d in preds if actor[d] != p}
        clock = list(pre)
        for d in preds:
            clock = [max(x, y) for x, y in zip(clock, clocks[d], strict=True)]
        clock[p] = j + 1
        if j >= start:
            for i in sorted(preds):
                if pre[actor[i]] > i or any(clocks[d][actor[i]] > i for d in preds if d != i):
                    continue  # ordered before j through another step
                _reverse(stack, clocks, actor, names, i, j, p, preds, pre, bound)
        clocks.append(clock)
        actor.append(p)
        last_of[p] = j
        if acc is None:
            barrier = j
        else:
            for o in acc.writes:
                last_write[o] = j
                readers[o] = []
            for o in acc.reads - acc.writes:
                readers.setdefault(o, []).append(j)


def _reverse(stack: list[Node], clocks: list[list[int]], actor: list[int], names: list[str],
             i: int, j: int, p: int, preds: set[int], pre: list[int], bound: int) -> None:
    """The race (i, j) (see ``races``): plan its reversal at node i."""
    node = stack[i]
    if node.fair:
        return
    me = names[p]
    m = j  # node m on: j's actor is a candidate until it takes step j
    while m > 0 and me in stack[m - 1].candidates and stack[m - 1].chosen != me:
        m -= 1
    ai = actor[i]
    if m > i and stack[m - 1].chosen != me and TIMER not in stack[m - 1].candidates and \
            (m == i + 1 or clocks[m - 1][ai] > i):
        return  # step i (or one after it) enabled j's actor: j cannot go first
    # j's clock without the race's own edge
    cj = list(pre)
    for d in preds:
        if d != i:
            cj = [max(x, y) for x, y in zip(cj, clocks[d], strict=True)]
    first: dict[int, int] = {}
    initials: list[str] = []
    for k in range(i + 1, j + 1):
        ck = cj if k == j else clocks[k]
        if k < j and (ck[ai] > i or cj[actor[k]] <= k):
            continue  # happens after i, or not before j: not in v
        a = p if k == j else actor[k]
        if a not in first:
            if all(ck[b] <= f for b, f in first.items()):
                initials.append(names[a])
            first[a] = k
    initials.sort(key=lambda n: n != me)
    for at in (i, _block_start(stack, i)):
        here = stack[at]
        # an initial that is no candidate here sleeps or waits: if a timer is pending, firing
        # it may be what lets it run (unasked, a timer fires only when nobody can run)
        options = [q if q in here.candidates else TIMER for q in initials]
        options = [q for q in options if q in here.candidates]
        if here.fair or not _covered(here).isdisjoint(options):
            continue
        for q in options:
            if here.allows(q, bound):
                here.todo.append(q)
                break


def _block_start(stack: list[Node], i: int) -> int:
    """The node where the actor that took step i began its current run of steps."""
    while i > 0 and stack[i - 1].chosen == stack[i].chosen:
        i -= 1
    return i


def estimate(decisions: int, candidates: int, bound: int) -> int:
    """sum over c <= bound of C(n, c) * (a + c)!: Musuvathi and Qadeer's bound (PLDI 2007)
    on the schedules of a candidates with at most ``bound`` preemptions, if no schedule
    takes more than n decisions."""
    return sum(math.comb(decisions, c) * math.factorial(candidates + c)
               for c in range(bound + 1))


def preemptions_of(stack: list[Node]) -> int:
    """The preemptions of the schedule the stack describes."""
    return stack[-1].preemptions + stack[-1].cost(stack[-1].chosen) if stack else 0


@attrs.define
class Search:
    """A bounded search in progress: its stack, one run at a time (``run``)."""

    bound: int
    prune: bool
    stack: list[Node] = attrs.Factory(list)
    exhausted: bool = False
    preemptions: int = 0
    """The preemptions of the last run's schedule."""
    candidates: int = 0
    """How many actors (and the timer) the first run offered at some decision."""

    async def run(self, one: Callable[[Explorer], Awaitable[RunResult]]) -> RunResult | None:
        """One run of the search (``one`` runs a schedule with the strategy it is given):
        its result, or None when it was cut short as redundant. The stack then stands at the
        next schedule, or ``exhausted`` is set. An interrupt drops the run in flight (a
        resumed search re-runs it)."""
        stack = self.stack
        base = len(stack)
        strategy = Explorer(stack, self.bound, self.prune)
        try:
            result: RunResult | None = await one(strategy)
        except _Pruned:
            result = None
        except Interrupted:
            del stack[base:]
            raise
        if result is not None:
            strategy.finish(result.steps, bool(result.violations))
        self.preemptions = preemptions_of(stack)
        if not self.candidates:
            self.candidates = len({n for node in stack for n in node.candidates})
        if self.prune:
            races(stack, base - 1 if base else 0, self.bound)
        self.exhausted = not advance(stack)
        return result


@attrs.define
class ExploreResult:
    scenario: str
    params: dict[str, Any]
    quirks: tuple[str, ...]
    preemptions: int
    prune: bool
    schedules: int
    """Runs to the end of a schedule."""
    pruned: int
    """Runs cut short because the rest would repeat an explored schedule."""
    exhausted: bool
    """Every schedule within the bound was explored (or pruned as equivalent)."""
    found: RunResult | None
    """The first schedule with a fatal violation; else the first with a warning."""
    found_preemptions: int
    estimate: int
    first_decisions: int
    candidates: int
    elapsed: float
    """Wall-clock seconds of this invocation (statistics only)."""
    interrupted: int | None = None
    release: str | None = None
    resumed: int = 0
    """Runs done before this invocation (from the checkpoint)."""
    earlier: list[str] = attrs.Factory(list)
    """What the invocations before this one (from the checkpoint) found."""
    coverage: HuntCoverage | None = None
    """What this invocation's schedules covered (``explore(coverage=True)``), numbered in
    the order they ran."""

    @property
    def clean(self) -> bool:
        """Clean within the bound: exhausted, and no violation found by any invocation."""
        return self.exhausted and self.found is None and not self.earlier


def _checkpoint_data(sc: str, params: dict[str, Any], quirks: tuple[str, ...],
                     release: str | None, bound: int, prune: bool, max_steps: int,
                     seed: int, stack: list[Node], counts: dict[str, int],
                     findings: list[str], exhausted: bool) -> dict[str, Any]:
    return {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION,
            "scenario": sc, "params": params, "quirks": list(quirks), "kernel": release,
            "preemptions": bound, "prune": prune, "max_steps": max_steps, "seed": seed,
            "exhausted": exhausted, **counts, "findings": findings,
            "stack": [n.to_json() for n in stack]}


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    raw = read_bounded(path, MAX_CHECKPOINT_BYTES, "explore checkpoint")
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise EmuError(f"{path} is not an explore checkpoint: invalid JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT or \
            data.get("format_version") != CHECKPOINT_VERSION:
        raise EmuError(f"{path} is not an explore checkpoint of format version "
                       f"{CHECKPOINT_VERSION}")
    return data


def explore(scenario: str, *, preemptions: int, params: Mapping[str, Any] | None = None,
            quirks: Iterable[str] = (), release: str | None = None,
            max_steps: int | None = None, prune: bool = True, seed: int = 0,
            max_schedules: int | None = None, checkpoint: str | Path | None = None,
            on_estimate: Callable[[int, int, int], None] | None = None,
            on_finding: Callable[[RunResult], None] | None = None,
            progress: Callable[[int, int], None] | None = None,
            coverage: bool = False) -> ExploreResult:
    """Explore every schedule of ``scenario`` with at most ``preemptions`` preemptions
    (with the reduction unless ``prune`` is False) until a fatal violation, the end of the
    space, ``max_schedules`` runs (pruned ones included), or an interrupt. ``seed`` seeds
    the scenario's own data choices (the same in every schedule). ``checkpoint``: resume
    from that file if it exists, and keep it up to date.

    ``on_estimate(n, a, estimate)`` is called after the first schedule, ``on_finding``
    when a schedule finds something (the first warning, a fatal violation),
    ``progress(schedules, pruned)`` after each run. ``coverage``: collect what the schedules
    run (not those cut short) covered (``sim.coverage``)."""
    if preemptions < 0:
        raise EmuError(f"bad --preemptions {preemptions} (at least 0)")
    sc, values, chosen = prepare(scenario, params, quirks, release)
    steps = step_budget(sc, values, max_steps)
    search = Search(preemptions, prune)
    counts = {"schedules": 0, "pruned": 0, "first_decisions": 0, "candidates": 0}
    path = Path(checkpoint) if checkpoint is not None else None
    findings: list[str] = []
    if path is not None and path.exists():
        data = load_checkpoint(path)
        mine = {"scenario": sc.name, "params": values, "quirks": list(chosen),
                "kernel": release, "preemptions": preemptions, "prune": prune,
                "max_steps": steps, "seed": seed}
        differ = [k for k, v in mine.items() if data.get(k) != v]
        if differ:
            raise EmuError(f"checkpoint {path} was written by another search (it differs in "
                           f"{', '.join(differ)})")
        search.stack = [Node.from_json(n) for n in data["stack"]]
        counts = {k: data[k] for k in counts}
        search.exhausted = data["exhausted"]
        findings = list(data["findings"])
    earlier = list(findings)
    resumed = counts["schedules"] + counts["pruned"]

    def save() -> None:
        if path is not None:
            write_atomic(path, json.dumps(_checkpoint_data(
                sc.name, values, chosen, release, preemptions, prune, steps, seed,
                search.stack, counts, findings, search.exhausted)) + "\n")

    async def main() -> ExploreResult:
        fatal: RunResult | None = None
        warning: RunResult | None = None
        found_preemptions = 0
        interrupted: int | None = None
        runs = 0
        covered = HuntCoverage(sc.name, 0, unit="schedule") if coverage else None
        start = time.perf_counter()
        try:
            while not search.exhausted and (max_schedules is None or runs < max_schedules):
                result = await search.run(lambda strategy: run_schedule(
                    sc, values, chosen, strategy, seed, steps, release, coverage=coverage))
                runs += 1
                if result is None:
                    counts["pruned"] += 1
                else:
                    if covered is not None and result.coverage is not None:
                        covered.add(covered.schedules, result.coverage)
                    counts["schedules"] += 1
                    if not counts["first_decisions"]:
                        counts["first_decisions"] = result.steps
                        counts["candidates"] = search.candidates
                        if on_estimate is not None:
                            on_estimate(result.steps, search.candidates,
                                        estimate(result.steps, search.candidates,
                                                 preemptions))
                    is_fatal = any(v.fatal for v in result.violations)
                    if result.violations and (is_fatal or warning is None):
                        v = result.violation
                        findings.append(f"{v.kind}: {v.message}")
                        if on_finding is not None:
                            on_finding(result)
                        if is_fatal:
                            fatal = result
                        else:
                            warning = result
                        found_preemptions = search.preemptions
                if progress is not None:
                    progress(counts["schedules"], counts["pruned"])
                if fatal is not None:
                    break
                if runs % CHECKPOINT_EVERY == 0:
                    save()
                INTERRUPT.check()
        except Interrupted as stop:
            interrupted = stop.signum
        save()
        return ExploreResult(sc.name, values, chosen, preemptions, prune, counts["schedules"],
                             counts["pruned"], search.exhausted, fatal or warning,
                             found_preemptions,
                             estimate(counts["first_decisions"], counts["candidates"],
                                      preemptions),
                             counts["first_decisions"], counts["candidates"],
                             time.perf_counter() - start, interrupted, release, resumed,
                             earlier, covered)

    return trio.run(main)
