"""Conflict-guided search (after RFF, ASPLOS'24) and the portfolio of strategies.

A schedule of the guided strategy is stored as **ordering constraints** between labelled
steps, never as choice indices (changing one index scrambles every later choice): a
constraint ``(before, after)`` says that the step labelled ``before`` (``(actor, op, n)``,
see ``strategies``) comes before the step labelled ``after``. A run enforces them while it
schedules and leaves every other choice to a base strategy, random walk or PCT at
``depth`` (drawn per schedule, even odds, and kept in its spec as ``base``: each finds
races the other misses, PCT's few preemptions at chosen points and random walk's many):

| at a decision, a candidate actor whose label is ...     | the guided strategy            |
|---------------------------------------------------------|--------------------------------|
| the ``after`` of a constraint whose ``before`` has not  | delays it (not a candidate)    |
| happened yet                                            |                                |
| anything else                                           | leaves it to the base strategy |
| (every candidate delayed)                               | lets the base choose among all |

The search keeps a **corpus**. After each run it takes the run's **conflict pairs** from the
accesses the controller recorded (``accesses``), timer steps and the checks' own state
(``accesses.CHECK``) aside: on each object, each read against the last write, and each write
against the last read since that write (else against that write), when another actor made it
(the reads-from and write-order edges, as RFF's reads-from pairs). A pair's coverage key is
``(object, (actor, op) first, (actor, op) second)``; a run that reaches a key not seen
before enters the corpus with its constraints and its pairs. A new schedule picks one pair,
at random among all the corpus's pairs whose reversed key is still unseen (the coverage it
aims at; when none is left, a random entry's random pair), and **reverses** it in its entry:
the entry's constraints, minus any naming the pair's steps, plus ``(second, first)``.
(Drawing an entry first, then one of its pairs, needed a median of 84 schedules on the
hotplug double registration, this 46.5, as measured when it came in.) The first schedule,
and one in ``FRESH``, run the base strategy alone.

Everything is a function of the seeds: schedule ``s`` draws its choices from ``Random(s)``
and from a corpus built from the schedules before it, so a hunt replays itself; and a
schedule's spec carries its constraints, so ``make_strategy(spec, s)`` rebuilds it alone.

The **portfolio** runs random, PCT at depths 2 and 3, the guided strategy and bounded
search round robin over the schedules of one hunt (seed s: member s mod 5; guided learns
from its own schedules only), and says which member found what first, at which schedule.
Each schedule records its member's spec, so its replay file is the member's.

Its **bounded search** member is ``explore``'s depth-first search (``Explorer``, with the
partial-order reduction) by iterative deepening: every schedule with at most 0 preemptions,
then at most 1, 2, ...; it keeps its stack across the hunt's schedules, runs every schedule
with the hunt's first seed (the scenario's own data choices stay fixed, as in ``explore``;
its spec numbers the schedule within the bound, so findings keep distinct names), and a
turn of it runs until one schedule completes (runs cut short as repeats of explored ones
are only counted). A bound whose space is exhausted gives a verdict line, "clean within K
preemptions" only when no schedule within it found anything; the next turn starts K+1.

| the hunt asks a search for ...   | guided, a fixed strategy | the portfolio            |
|----------------------------------|--------------------------|--------------------------|
| ``run(one, s)``: schedule s      | its strategy for s, run  | member s mod 5's run     |
| ``summary()``                    | the corpus (guided)      | a line per member, then  |
|                                  |                          | bounded search's verdicts|
"""

from __future__ import annotations

import abc
import random
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import attrs

from .accesses import CHECK
from .controller import TIMER
from .strategies import PCT, Label, Labels, RandomWalk, Replay, labelled, make_strategy

if TYPE_CHECKING:
    from .controller import Actor, Controller
    from .runner import RunResult

Run = Callable[[Any, int], Awaitable["RunResult"]]
"""The hunt's ``one(strategy, seed)``: run one schedule of its scenario."""

Constraint = tuple[Label, Label]
"""(before, after): the step labelled ``before`` is taken before the one labelled ``after``."""

Pair = tuple[str, int, int]
"""A conflict pair of a run: (object, earlier step, later step), steps 1-based."""

FRESH = 8
"""One schedule in FRESH ignores the corpus (the base strategy alone): a corpus whose
entries all hold one early choice fixed must not starve the rest of the space."""

MAX_CONSTRAINTS = 6
"""Constraints a schedule keeps (the oldest go first): each one narrows the schedules the
base strategy may pick from, and a long chain of them is rarely satisfiable."""


def _base(spec: dict[str, Any], seed: int) -> RandomWalk | PCT:
    timers = spec.get("timers") is True
    if spec["base"] == "random":
        return RandomWalk(seed, timers=timers)
    return PCT(seed, int(spec["depth"]), int(spec["k"]), timers=timers)


def _with_base(spec: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """``spec`` with its schedule's base strategy: the one it names, else (a hunt's spec)
    random walk or PCT, even odds: each finds races the other misses (PCT's few
    preemptions at chosen points, random walk's many), and a constraint helps either."""
    if spec.get("base") in ("random", "pct"):
        return spec
    return {**spec, "base": ("random", "pct")[rng.randrange(2)]}


class Ordered(Labels):
    """A following strategy that enforces ordering constraints: an actor whose next step is
    the ``after`` of a constraint waits while its ``before`` has not been taken (guided
    schedules here, the shrinker's rebuilt ones)."""

    def __init__(self, constraints: list[Constraint]) -> None:
        super().__init__()
        self.constraints = constraints
        self._waits: dict[Label, list[Label]] = {}
        for before, after in constraints:
            self._waits.setdefault(after, []).append(before)

    def pending(self, actor: Actor) -> list[Label]:
        """The ``before`` labels not taken yet that hold ``actor``'s next step back."""
        return [before for before in self._waits.get(self.label(actor), ())
                if self.taken.get(before[:2], 0) < before[2]]


class GuidedSchedule(Ordered):
    """One schedule of the guided strategy: enforce ``constraints`` where the candidates
    allow it, else choose as the base strategy does."""

    wants_accesses = True
    """The search learns from each run's accesses."""

    def __init__(self, spec: dict[str, Any], seed: int,
                 constraints: list[Constraint]) -> None:
        super().__init__(constraints)
        self.base = _base(spec, seed)
        self.timer_choices = self.base.timer_choices
        self._spec = {k: v for k, v in spec.items() if k != "constraints"}

    def spec(self) -> dict[str, Any]:
        return {**self._spec, "constraints": [[list(b), list(a)] for b, a in self.constraints]}

    def choose(self, enabled: list[Actor], ctl: Controller) -> Actor:
        candidates = enabled
        if self.constraints and len(enabled) > 1:
            candidates = [a for a in enabled if not self.pending(a)] or enabled
        return self.took(self.base.choose(candidates, ctl), enabled, ctl)


def conflict_pairs(result: RunResult) -> list[Pair]:
    """The run's conflict pairs (the module docstring), in step order; the timer's steps
    take no part (its label names a deadline, not a step of the model)."""
    if not result.accesses:
        return []
    names = [name for _, name, _ in result.decisions]
    last_write: dict[str, int] = {}
    reads: dict[str, list[int]] = {}
    pairs: list[Pair] = []
    for step, acc in enumerate(result.accesses, 1):
        me = names[step - 1]
        if me == TIMER:
            continue
        for obj, write in acc.accesses():
            if obj.startswith(CHECK):
                continue
            w = last_write.get(obj)
            if write:
                since = reads.pop(obj, [])
                earlier = [r for r in since if names[r - 1] != me]
                if not earlier and w is not None and names[w - 1] != me:
                    earlier = [w]
                pairs += [(obj, e, step) for e in earlier[-1:]]
                last_write[obj] = step
            else:
                if w is not None and names[w - 1] != me:
                    pairs.append((obj, w, step))
                reads.setdefault(obj, []).append(step)
    return pairs


def _key(obj: str, first: Label, second: Label) -> tuple[str, str, str, str, str]:
    """A conflict pair's coverage key: the object, and who did what first and second."""
    return obj, first[0], first[1], second[0], second[1]


class _Entry:
    """A corpus entry: the constraints a run had, and the conflict pairs it observed
    (object, first label, second label)."""

    __slots__ = ("constraints", "pairs")

    def __init__(self, constraints: list[Constraint],
                 pairs: list[tuple[str, Label, Label]]) -> None:
        self.constraints = constraints
        self.pairs = pairs


class _Search(abc.ABC):
    """A search that runs one schedule per turn: its strategy for the seed."""

    @abc.abstractmethod
    def strategy(self, seed: int) -> Any:
        """Schedule ``seed``'s strategy."""

    @abc.abstractmethod
    def observe(self, result: RunResult, strategy: Any) -> None:
        """Learn from a run of ``strategy``."""

    async def run(self, one: Run, seed: int) -> RunResult:
        strategy = self.strategy(seed)
        result = await one(strategy, seed)
        self.observe(result, strategy)
        return result

    def summary(self) -> list[str]:
        return []


class Guided(_Search):
    """The guided search of one hunt: a strategy per schedule, and what each run taught."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.corpus: list[_Entry] = []
        self.seen: set[tuple[str, str, str, str, str]] = set()
        """Coverage keys reached so far (membership only; never iterated)."""
        self.frontier: list[tuple[_Entry, tuple[str, Label, Label], tuple]] = []
        """The corpus's pairs whose reversal has not been seen, in corpus order, each with
        its reversal's key (those seen since are dropped when the next schedule is drawn)."""

    def strategy(self, seed: int) -> GuidedSchedule:
        rng = random.Random(seed)
        spec = _with_base(self.spec, rng)
        if not self.corpus or rng.randrange(FRESH) == 0:
            return GuidedSchedule(spec, seed, [])
        seen = self.seen
        self.frontier = [f for f in self.frontier if f[2] not in seen]
        if self.frontier:
            entry, (_, first, second), _ = self.frontier[rng.randrange(len(self.frontier))]
        else:
            entry = self.corpus[rng.randrange(len(self.corpus))]
            _, first, second = rng.choice(entry.pairs)
        kept = [c for c in entry.constraints
                if first not in c and second not in c][-(MAX_CONSTRAINTS - 1):]
        return GuidedSchedule(spec, seed, [*kept, (second, first)])

    def observe(self, result: RunResult, strategy: Any) -> None:
        """Learn from a run of ``strategy``: keep it if it reached a new conflict pair."""
        labels = labelled(result.decisions)
        new = False
        pairs: list[tuple[str, Label, Label]] = []
        for obj, i, j in conflict_pairs(result):
            a, b = labels[i - 1], labels[j - 1]
            key = _key(obj, a, b)
            if key not in self.seen:
                self.seen.add(key)
                new = True
            pairs.append((obj, a, b))
        if new:
            entry = _Entry(strategy.constraints, pairs)
            self.corpus.append(entry)
            reversals = [(p, _key(p[0], p[2], p[1])) for p in pairs]
            self.frontier += [(entry, p, key) for p, key in reversals if key not in self.seen]

    def summary(self) -> list[str]:
        return [f"  guided: {len(self.corpus)} corpus entries, {len(self.seen)} conflict "
                f"pairs (object, first actor and op, second) seen"]


class Fixed(_Search):
    """The search of a strategy that learns nothing: ``make_strategy`` for every seed."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec

    def strategy(self, seed: int) -> Any:
        return make_strategy(self.spec, seed)

    def observe(self, result: RunResult, strategy: Any) -> None:
        """Nothing to learn."""


class Bounded:
    """The portfolio's bounded search (the module docstring): explore's search at bound 0,
    1, 2, ..., its stack kept across the hunt's schedules."""

    def __init__(self, seed: int) -> None:
        from .explore import Search  # (explore runs schedules: it imports the runner)
        self.seed = seed
        """Every run's seed: the hunt's first (the scenario's data, fixed)."""
        self.search = Search(0, True)
        self.schedules = self.pruned = 0
        """Complete runs and runs cut short at the current bound."""
        self.found_here: str | None = None
        """The first violation kind found within the current bound."""
        self.preemptions = 0
        """The preemptions of the last schedule run."""
        self.verdicts: list[str] = []
        """A line per exhausted bound."""

    async def run(self, one: Run, seed: int) -> RunResult:
        """Run until one schedule completes (``seed`` is the hunt's: unused); a bound
        exhausted on the way gives its verdict, and the search goes on at the next."""
        while True:
            result = await self.search.run(lambda strategy: one(strategy, self.seed))
            self.preemptions = self.search.preemptions
            if result is None:
                self.pruned += 1
            else:
                self.schedules += 1
                # which schedule at this bound: every one has the same seed (and file name)
                result = attrs.evolve(result, strategy={**result.strategy,
                                                        "schedule": self.schedules})
                if result.violations and self.found_here is None:
                    self.found_here = result.violation.kind
            if self.search.exhausted:
                self._exhausted()
            if result is not None:
                return result

    def _exhausted(self) -> None:
        from .explore import Search
        k = self.search.bound
        within = f"within {k} preemption{'s' if k != 1 else ''}"
        self.verdicts.append(
            f"  bounded search: {f'found {self.found_here} ' if self.found_here else 'clean '}"
            f"{within} (exhausted after {self.schedules} schedules, {self.pruned} cut short)")
        self.search = Search(k + 1, True)
        self.schedules = self.pruned = 0
        self.found_here = None

    def summary(self) -> list[str]:
        return self.verdicts


MEMBERS = ("random", "pct d2", "pct d3", "guided", "bounded")
"""The portfolio's members, in round-robin order."""


def member_spec(spec: dict[str, Any], name: str) -> dict[str, Any]:
    """The spec of the portfolio member ``name`` (``spec``: the portfolio's, with k);
    bounded search's is explore's at bound 0 (its first schedule)."""
    timers = {"timers": True} if spec.get("timers") is True else {}
    if name == "random":
        return {"name": "random", **timers}
    if name == "guided":
        return {"name": "guided", "depth": 3, "k": spec["k"], **timers}
    if name == "bounded":
        return {"name": "explore", "preemptions": 0, "timers": True}
    return {"name": "pct", "depth": int(name[-1]), "k": spec["k"], **timers}


class Portfolio:
    """Random, PCT d2, PCT d3, guided and bounded search round robin over the schedules of
    one hunt."""

    def __init__(self, spec: dict[str, Any], seed: int) -> None:
        self.first_seed = seed
        self.bounded = Bounded(seed)
        self.searches: list[_Search | Bounded] = [
            Guided(member_spec(spec, n)) if n == "guided" else
            self.bounded if n == "bounded" else Fixed(member_spec(spec, n)) for n in MEMBERS]
        self.found: dict[str, tuple[int, str] | None] = dict.fromkeys(MEMBERS)
        """Member -> (its first finding's schedule number in the hunt, the violation), or
        None while it has found nothing."""
        self.ran = dict.fromkeys(MEMBERS, 0)

    async def run(self, one: Run, seed: int) -> RunResult:
        i = seed % len(MEMBERS)
        name = MEMBERS[i]
        result = await self.searches[i].run(one, seed)
        self.ran[name] += 1
        fatal = [v for v in result.violations if v.fatal]
        if fatal and self.found[name] is None:
            what = fatal[0].kind
            if name == "bounded":
                what += f" (a schedule with {self.bounded.preemptions} preemption(s))"
            self.found[name] = (seed - self.first_seed + 1, what)
        return result

    def summary(self) -> list[str]:
        """One line per member: what it found first, at which schedule of the hunt; then
        bounded search's verdicts."""
        lines = []
        for name in MEMBERS:
            got = self.found[name]
            lines.append(f"  {name:<7} {self.ran[name]:>6} schedules: " + (
                f"first found {got[1]} at schedule {got[0]}" if got else "found nothing"))
        return lines + self.bounded.summary()


def search(spec: dict[str, Any], seed: int) -> Guided | Portfolio | Fixed:
    """The search a hunt starting at ``seed`` runs for the (completed) spec ``spec``."""
    if spec["name"] == "guided":
        return Guided(spec)
    if spec["name"] == "portfolio":
        return Portfolio(spec, seed)
    return Fixed(spec)


def make(spec: dict[str, Any], seed: int) -> Any:
    """One schedule's strategy from its spec alone: guided with the spec's constraints; a
    portfolio's member ``seed mod 5`` (the guided one with no corpus, bounded search's
    first schedule)."""
    if spec["name"] == "portfolio":
        spec = member_spec(spec, MEMBERS[seed % len(MEMBERS)])
        if spec["name"] == "explore":
            from .explore import Explorer  # (explore imports the runner, and so this)
            return Explorer([], 0, True)
        if spec["name"] != "guided":
            return Fixed(spec).strategy(seed)
    constraints = [(_label(b), _label(a)) for b, a in spec.get("constraints", [])]
    return GuidedSchedule(_with_base(spec, random.Random(seed)), seed, constraints)


def rebuilt(result: RunResult) -> Any:
    """A strategy that runs ``result``'s schedule again (with ``result.seed``): from its
    spec, or for bounded search, whose strategy was a search stack, from its decisions."""
    if result.strategy["name"] == "explore":
        return Replay(list(result.decisions))
    return make_strategy(result.strategy, result.seed)


def _label(raw: Any) -> Label:
    name, op, n = raw
    return str(name), str(op), int(n)
