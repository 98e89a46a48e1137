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
accesses the controller recorded (``accesses``), timer steps aside: on each object, each
read against the last write, and each write against the last read since that write (else
against that write), when another actor made it (the reads-from and write-order edges, as
RFF's reads-from pairs). A pair's coverage key is ``(object, (actor, op) first, (actor, op)
second)``; a run that reaches a key not seen before enters the corpus with its constraints
and its pairs. A new schedule picks a corpus entry and one of its pairs, one whose reversed
key is still unseen if there is any (that is the new coverage it aims at), and **reverses**
it: the entry's constraints, minus any naming the pair's steps, plus ``(second, first)``.
The first schedule, and one in ``FRESH``, run the base strategy alone.

Everything is a function of the seeds: schedule ``s`` draws its choices from ``Random(s)``
and from a corpus built from the schedules before it, so a hunt replays itself; and a
schedule's spec carries its constraints, so ``make_strategy(spec, s)`` rebuilds it alone.

The **portfolio** runs random, PCT at depths 2 and 3 and the guided strategy round robin
over the schedules of one hunt (seed s: member s mod 4; guided learns from its own
schedules only), and says which member found what first, at which schedule. Each schedule
records its member's spec, so its replay file is the member's.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from .controller import TIMER
from .strategies import PCT, Label, Labels, RandomWalk, labelled, make_strategy

if TYPE_CHECKING:
    from .controller import Actor, Controller
    from .runner import RunResult

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


class GuidedSchedule(Labels):
    """One schedule of the guided strategy: enforce ``constraints`` where the candidates
    allow it, else choose as the base strategy does."""

    wants_accesses = True
    """The search learns from each run's accesses."""

    def __init__(self, spec: dict[str, Any], seed: int,
                 constraints: list[Constraint]) -> None:
        super().__init__()
        self.base = _base(spec, seed)
        self.timer_choices = self.base.timer_choices
        self.constraints = constraints
        self._spec = {k: v for k, v in spec.items() if k != "constraints"}
        self._waits: dict[Label, list[Label]] = {}
        for before, after in constraints:
            self._waits.setdefault(after, []).append(before)

    def spec(self) -> dict[str, Any]:
        return {**self._spec, "constraints": [[list(b), list(a)] for b, a in self.constraints]}

    def _happened(self, label: Label) -> bool:
        return self.taken.get((label[0], label[1]), 0) >= label[2]

    def _delayed(self, actor: Actor) -> bool:
        befores = self._waits.get(self.label(actor))
        return befores is not None and not all(self._happened(b) for b in befores)

    def choose(self, enabled: list[Actor], ctl: Controller) -> Actor:
        candidates = enabled
        if self._waits and len(enabled) > 1:
            candidates = [a for a in enabled if not self._delayed(a)] or enabled
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


class Guided:
    """The guided search of one hunt: a strategy per schedule, and what each run taught."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.corpus: list[_Entry] = []
        self.seen: set[tuple[str, str, str, str, str]] = set()
        """Coverage keys reached so far (membership only; never iterated)."""

    def strategy(self, seed: int) -> GuidedSchedule:
        rng = random.Random(seed)
        spec = _with_base(self.spec, rng)
        if not self.corpus or rng.randrange(FRESH) == 0:
            return GuidedSchedule(spec, seed, [])
        entry = self.corpus[rng.randrange(len(self.corpus))]
        unseen = [p for p in entry.pairs if _key(p[0], p[2], p[1]) not in self.seen]
        _, first, second = rng.choice(unseen or entry.pairs)
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
            self.corpus.append(_Entry(strategy.constraints, pairs))

    def summary(self) -> list[str]:
        return [f"  guided: {len(self.corpus)} corpus entries, {len(self.seen)} conflict "
                f"pairs (object, first actor and op, second) seen"]


class Fixed:
    """The search of a strategy that learns nothing: ``make_strategy`` for every seed."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec

    def strategy(self, seed: int) -> Any:
        return make_strategy(self.spec, seed)

    def observe(self, result: RunResult, strategy: Any) -> None:
        """Nothing to learn."""

    def summary(self) -> list[str]:
        return []


MEMBERS = ("random", "pct d2", "pct d3", "guided")
"""The portfolio's members, in round-robin order."""


def member_spec(spec: dict[str, Any], name: str) -> dict[str, Any]:
    """The spec of the portfolio member ``name`` (``spec``: the portfolio's, with k)."""
    timers = {"timers": True} if spec.get("timers") is True else {}
    if name == "random":
        return {"name": "random", **timers}
    if name == "guided":
        return {"name": "guided", "depth": 3, "k": spec["k"], **timers}
    return {"name": "pct", "depth": int(name[-1]), "k": spec["k"], **timers}


class Portfolio:
    """Random, PCT d2, PCT d3 and guided round robin over the schedules of one hunt."""

    def __init__(self, spec: dict[str, Any], seed: int) -> None:
        self.first_seed = seed
        self.searches = [Guided(member_spec(spec, n)) if n == "guided"
                         else Fixed(member_spec(spec, n)) for n in MEMBERS]
        self.found: dict[str, tuple[int, str] | None] = dict.fromkeys(MEMBERS)
        """Member -> (its first finding's schedule number in the hunt, the violation), or
        None while it has found nothing."""
        self.ran = dict.fromkeys(MEMBERS, 0)

    @staticmethod
    def _member(seed: int) -> int:
        return seed % len(MEMBERS)

    def strategy(self, seed: int) -> Any:
        return self.searches[self._member(seed)].strategy(seed)

    def observe(self, result: RunResult, strategy: Any) -> None:
        i = self._member(result.seed)
        name = MEMBERS[i]
        self.ran[name] += 1
        self.searches[i].observe(result, strategy)
        fatal = [v for v in result.violations if v.fatal]
        if fatal and self.found[name] is None:
            self.found[name] = (result.seed - self.first_seed + 1, fatal[0].kind)

    def summary(self) -> list[str]:
        """One line per member: what it found first, at which schedule of the hunt."""
        lines = []
        for name in MEMBERS:
            got = self.found[name]
            lines.append(f"  {name:<7} {self.ran[name]:>6} schedules: " + (
                f"first found {got[1]} at schedule {got[0]}" if got else "found nothing"))
        return lines


def search(spec: dict[str, Any], seed: int) -> Guided | Portfolio | Fixed:
    """The search a hunt starting at ``seed`` runs for the (completed) spec ``spec``."""
    if spec["name"] == "guided":
        return Guided(spec)
    if spec["name"] == "portfolio":
        return Portfolio(spec, seed)
    return Fixed(spec)


def make(spec: dict[str, Any], seed: int) -> Any:
    """One schedule's strategy from its spec alone: guided with the spec's constraints; a
    portfolio's member ``seed mod 4`` (the guided one with no corpus)."""
    if spec["name"] == "portfolio":
        spec = member_spec(spec, MEMBERS[seed % len(MEMBERS)])
        if spec["name"] != "guided":
            return Fixed(spec).strategy(seed)
    constraints = [(_label(b), _label(a)) for b, a in spec.get("constraints", [])]
    return GuidedSchedule(_with_base(spec, random.Random(seed)), seed, constraints)


def _label(raw: Any) -> Label:
    name, op, n = raw
    return str(name), str(op), int(n)
