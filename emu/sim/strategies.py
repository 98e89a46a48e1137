"""Strategies: which enabled actor takes the next step.

The candidates a strategy sees are the enabled actors and, while timers are pending, the
controller's timer pseudo-actor (``ctl.timer``, name ``timer``): choosing it fires the
earliest timer (see ``controller``).

- ``RandomWalk``: uniform among the candidates, from a seeded RNG. The timer is one more
  candidate with the same weight as an actor: a sleep ends after a geometrically
  distributed number of other steps, and the earliest deadline fires first, so costs order
  the sleepers among themselves and shape probabilities, but every interleaving of a sleep
  with the other actors' steps stays reachable. Random walk is fair: yields and the fair
  suffix change nothing for it.
- ``PCT`` (Burckhardt et al., ASPLOS 2010): distinct random priorities, d-1 change points in
  [1, k]; always run the highest-priority candidate; at the i-th change point the candidate
  that just stepped drops below every other. One run finds a bug of depth d with
  probability at least 1/(n * k^(d-1)). The timer pseudo-actor is one of the n: it gets its
  priority when it first appears, at a uniformly random rank among the actors' initial
  priorities (so the n+1 priorities are a uniform random order), and a change point right
  after a timer step lowers it like any actor (then timers fire only when nothing else can
  run). A yield (``ctl.yielder``, from ``yield_point``) drops the yielding actor below every
  other, as Coyote and Shuttle do. In the fair suffix (``ctl.fair``) it picks uniformly
  among the candidates from its own RNG.
- ``Replay``: follow a recorded decision list (``timer`` decisions included), and say
  exactly where it stops fitting: the decision expected and every runnable actor's operation.
- ``Tolerant``: follow a recorded decision list by *label*, realigning where the model has
  changed, then go on with a seeded strategy (below).

A decision's **label** is ``(actor, operation, n)``: the n-th time that actor takes a step
at that operation. Labels are unique within a schedule and do not depend on position, so
they survive a change that adds, removes or renames a scheduling point elsewhere.
``Tolerant`` realigns by them, at each decision, on the first recorded label not yet taken
(the *head*):

| situation                                         | choice                              |
|---------------------------------------------------|-------------------------------------|
| the head's actor has finished or moved past it    | skip the head, look again           |
| the head's actor can run, at the head's label     | it (matched)                        |
| the head's actor can run, at a label not recorded | it (a new step)                     |
| the head's actor cannot run                       | the runnable actor whose label the  |
|                                                   | file has first (matched, reordered) |
| no runnable actor stands at a recorded label      | the seeded strategy                 |

A strategy's choices depend only on its seed and on what the controller shows it.
"""

from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING, Any

from ..errors import ReplayDivergence

if TYPE_CHECKING:
    from .controller import Actor, Controller


class RandomWalk:
    """Uniform among the candidates (actors and the timer), from a seeded RNG."""

    def __init__(self, seed: int, *, timers: bool = False) -> None:
        self.rng = random.Random(seed)
        self.timer_choices = timers

    def spec(self) -> dict[str, Any]:
        return {"name": "random", **_timers_spec(self.timer_choices)}

    def choose(self, enabled: list[Actor], ctl: Controller) -> Actor:
        if len(enabled) == 1:
            return enabled[0]
        return enabled[self.rng.randrange(len(enabled))]


class PCT:
    """Probabilistic concurrency testing, with the timer as a candidate, yields, and a fair
    suffix (see the module docstring)."""

    def __init__(self, seed: int, depth: int, k: int, *, timers: bool = False) -> None:
        if depth < 1:
            raise ValueError("PCT depth must be at least 1")
        self.timer_choices = timers
        self.rng = random.Random(seed)
        self.depth = depth
        self.k = max(k, 1)
        points = range(1, self.k + 1)
        self.change_points = sorted(self.rng.sample(points, min(depth - 1, len(points))))
        self._next_change = 0
        self.priority: list[float] = []
        self._bottom = depth - 1
        """The next priority that drops a candidate below every other (change points take
        d-1, d-2, ... as in the paper; yields go on below)."""
        self._last: Actor | None = None
        """The candidate that took the last step."""

    def spec(self) -> dict[str, Any]:
        return {"name": "pct", "depth": self.depth, "k": self.k,
                **_timers_spec(self.timer_choices)}

    def _lower(self, index: int) -> None:
        self.priority[index] = self._bottom
        self._bottom -= 1

    def choose(self, enabled: list[Actor], ctl: Controller) -> Actor:
        priority = self.priority
        if not priority:
            ranks = list(range(self.depth, self.depth + len(ctl.actors)))
            self.rng.shuffle(ranks)
            priority += [float(r) for r in ranks]
        if enabled[-1] is ctl.timer and len(priority) == len(ctl.actors):
            # the timer's first appearance: a uniform rank among the initial priorities
            priority.append(self.depth + self.rng.randrange(len(ctl.actors) + 1) - 0.5)
        if ctl.fair:
            chosen = enabled[self.rng.randrange(len(enabled))]
            self._last = chosen
            return chosen
        while (self._next_change < len(self.change_points)
               and ctl.step >= self.change_points[self._next_change]):
            if self._last is not None:
                self._lower(self._last.index)
            self._next_change += 1
        if ctl.yielder is not None:
            self._lower(ctl.yielder.index)
            ctl.yielder = None
        chosen = max(enabled, key=lambda a: priority[a.index])
        self._last = chosen
        return chosen


def pct_bound(n: int, k: int, depth: int) -> str:
    """PCT's guaranteed per-run probability 1/(n*k^(d-1)) of hitting a given depth-d bug,
    as text. Computed in log space: at depth 330 the bound is far below the smallest float,
    and ``k ** (d-1)`` for a huge d would take forever."""
    exponent = -(math.log10(max(n, 1)) + (depth - 1) * math.log10(max(k, 1)))
    if exponent > -4:
        return f"{10 ** exponent:.3g}"
    whole = math.floor(exponent)
    return f"{10 ** (exponent - whole):.3g}e{whole}"


Label = tuple[str, str, int]
"""(actor name, operation, occurrence: 1 for the first time that actor steps at it)."""


def labelled(decisions: list[tuple[int, str, str]]) -> list[Label]:
    """The labels of a decision list ``[(step, actor, operation)]``."""
    seen: dict[tuple[str, str], int] = {}
    out = []
    for _, name, op in decisions:
        n = seen[name, op] = seen.get((name, op), 0) + 1
        out.append((name, op, n))
    return out


def _ordinal(n: int) -> str:
    return f"{n}{'tsnrhtdd'[(n // 10 % 10 != 1) * (n % 10 < 4) * n % 10::4]}"


def runnable(enabled: list[Actor]) -> str:
    """The candidates of a decision, as ``actor: 'operation'``."""
    return ", ".join(f"{a.name}: '{a.op}'" for a in enabled)


class Labels:
    """What a following strategy keeps track of: each actor's label, and the preemptions
    taken (a switch away from an actor that could have gone on and does not yield, the
    timer pseudo-actor aside) with the label the preempted actor stood at."""

    timer_choices = True
    """The controller always offers the timer to a replay (it is chosen only by name)."""

    def __init__(self) -> None:
        self.taken: dict[tuple[str, str], int] = {}
        self.last: Actor | None = None
        self.preemptions: list[tuple[int, Label, str]] = []
        """(step, label of the preempted actor, the actor switched to)."""

    def label(self, actor: Actor) -> Label:
        return actor.name, actor.op, self.taken.get((actor.name, actor.op), 0) + 1

    def took(self, chosen: Actor, enabled: list[Actor], ctl: Controller) -> Actor:
        """Record that ``chosen`` takes the next step; returns it."""
        last = self.last
        if last is not None and last is not chosen and last is not ctl.timer and \
                last is not ctl.yielder and last in enabled:
            self.preemptions.append((ctl.step + 1, self.label(last), chosen.name))
        key = (chosen.name, chosen.op)
        self.taken[key] = self.taken.get(key, 0) + 1
        self.last = chosen
        return chosen


class Replay(Labels):
    """Follow a recorded decision list, strictly: the first decision that does not fit
    ends the run, naming the decision expected and what could run instead. ``timer``
    decisions fire the earliest timer; a file written before timers were choices has none,
    and replays wherever no timer step was needed (firing when nobody can run is forced,
    never recorded)."""

    def __init__(self, decisions: list[tuple[int, str, str]]) -> None:
        super().__init__()
        self.decisions = decisions

    def spec(self) -> dict[str, Any]:
        return {"name": "replay"}

    def choose(self, enabled: list[Actor], ctl: Controller) -> Actor:
        i = ctl.step
        if i >= len(self.decisions):
            ctl.abort_run(ReplayDivergence(
                f"the schedule goes on past the {len(self.decisions)} recorded decisions; "
                f"runnable: {runnable(enabled)}"))
        _, name, op = self.decisions[i]
        n = self.taken.get((name, op), 0) + 1
        expected = f"{name} doing '{op}' (its {_ordinal(n)} time)"
        for actor in enabled:
            if actor.name == name:
                if actor.op != op:
                    ctl.abort_run(ReplayDivergence(
                        f"at step {i + 1} the replay file has {expected}, but here {name} is "
                        f"at '{actor.op}'; runnable: {runnable(enabled)}"))
                return self.took(actor, enabled, ctl)
        ctl.abort_run(ReplayDivergence(
            f"at step {i + 1} the replay file chooses {name} ('{op}', its {_ordinal(n)} "
            f"time), which cannot run here; runnable: {runnable(enabled)}"))
        raise AssertionError("unreachable")


class Tolerant(Labels):
    """Follow a recorded decision list by label, realigning where the model changed (the
    table in the module docstring), then go on with ``then``. Counts what it did."""

    def __init__(self, decisions: list[tuple[int, str, str]], then: Any) -> None:
        super().__init__()
        self.labels = labelled(decisions)
        self.where = {lab: i for i, lab in enumerate(self.labels)}
        self.pending = [True] * len(self.labels)
        self.head = 0
        self.then = then
        self.matched = self.skipped = self.new = self.free = 0
        self.stand_in = -1
        """The head decision whose actor already took one step of a label the file lacks in
        its place (an inserted or renamed operation): after that one, the head's label is
        gone if the actor still stands at an unknown label, so the replay moves on instead
        of running that actor past the window."""
        self._actors: dict[str, Actor] = {}

    def spec(self) -> dict[str, Any]:
        return {"name": "tolerant-replay"}

    def _advance(self, enabled: list[Actor], ctl: Controller) -> None:
        """Move the head past recorded decisions that can no longer be taken."""
        if not self._actors:
            self._actors = {a.name: a for a in ctl.actors}
        while self.head < len(self.labels):
            if self.pending[self.head]:
                name = self.labels[self.head][0]
                actor = ctl.timer if name == ctl.timer.name else self._actors.get(name)
                if actor is None or actor.done:
                    gone = True
                elif actor is ctl.timer and actor not in enabled:
                    return  # (its operation names a deadline only while it is offered)
                else:
                    label = self.label(actor)
                    gone = self.where.get(label, -1) > self.head or (
                        self.stand_in == self.head and label not in self.where)
                if not gone:
                    return
                self.pending[self.head] = False
                self.skipped += 1
            self.head += 1

    def _take(self, actor: Actor, index: int, enabled: list[Actor], ctl: Controller) -> Actor:
        self.pending[index] = False
        self.matched += 1
        return self.took(actor, enabled, ctl)

    def choose(self, enabled: list[Actor], ctl: Controller) -> Actor:
        self._advance(enabled, ctl)
        if self.head < len(self.labels):
            head = self.labels[self.head]
            for actor in enabled:
                if actor.name == head[0]:
                    label = self.label(actor)
                    if label == head:
                        return self._take(actor, self.head, enabled, ctl)
                    if label not in self.where:
                        self.new += 1
                        self.stand_in = self.head
                        return self.took(actor, enabled, ctl)
            recorded = [(self.where[lab], a) for a in enabled
                        if (lab := self.label(a)) in self.where and self.pending[self.where[lab]]]
            if recorded:
                index, actor = min(recorded, key=lambda r: r[0])
                return self._take(actor, index, enabled, ctl)
        self.free += 1
        return self.took(self.then.choose(enabled, ctl), enabled, ctl)

    def summary(self) -> str:
        """What the realignment did, in one line."""
        rest = len(self.labels) - self.matched - self.skipped
        return (f"{self.matched} of {len(self.labels)} recorded decisions matched, "
                f"{self.skipped} skipped" + (f", {rest} not reached" if rest else "")
                + f"; {self.new} new step(s) where the file's actor stood, {self.free} by "
                f"the seeded strategy")


def _timers_spec(timers: bool) -> dict[str, Any]:
    """The spec key of timers as choices: absent when off, so older specs read the same."""
    return {"timers": True} if timers else {}


def make_strategy(spec: dict[str, Any], seed: int) -> Any:
    """A strategy from its replay-file spec (``{"name": "pct", "depth": 3, "k": 40}``;
    ``"timers": true`` makes firing a timer a choice whenever timers are pending).
    ``guided`` and ``portfolio``: one schedule of them (``guided.make``)."""
    timers = spec.get("timers") is True
    if spec["name"] == "random":
        return RandomWalk(seed, timers=timers)
    if spec["name"] == "pct":
        return PCT(seed, int(spec["depth"]), int(spec["k"]), timers=timers)
    if spec["name"] in ("guided", "portfolio"):
        from . import guided  # (guided builds on this module's strategies)
        return guided.make(spec, seed)
    raise ValueError(f"unknown strategy {spec['name']!r} (known: random, pct, guided, "
                     f"portfolio)")
