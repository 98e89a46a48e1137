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
  exactly where it stops fitting.

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


class Replay:
    """Follow a recorded decision list. ``timer`` decisions fire the earliest timer; a file
    written before timers were choices has none, and replays wherever no timer step was
    needed (firing when nobody can run is forced, never recorded)."""

    timer_choices = True
    """The controller always offers the timer to a replay (it is chosen only by name)."""

    def __init__(self, decisions: list[tuple[int, str, str]]) -> None:
        self.decisions = decisions

    def spec(self) -> dict[str, Any]:
        return {"name": "replay"}

    def choose(self, enabled: list[Actor], ctl: Controller) -> Actor:
        i = ctl.step
        if i >= len(self.decisions):
            ctl.abort_run(ReplayDivergence(
                f"the schedule goes on past the {len(self.decisions)} recorded decisions"))
        _, name, op = self.decisions[i]
        for actor in enabled:
            if actor.name == name:
                if actor.op != op:
                    ctl.abort_run(ReplayDivergence(
                        f"at step {i + 1} the replay file has {name} doing '{op}', but here "
                        f"{name} is at '{actor.op}'"))
                return actor
        here = ", ".join(f"{a.name} ('{a.op}')" for a in enabled)
        ctl.abort_run(ReplayDivergence(
            f"at step {i + 1} the replay file chooses {name} ('{op}'), which cannot run here; "
            f"enabled: {here}"))
        raise AssertionError("unreachable")


def _timers_spec(timers: bool) -> dict[str, Any]:
    """The spec key of timers as choices: absent when off, so older specs read the same."""
    return {"timers": True} if timers else {}


def make_strategy(spec: dict[str, Any], seed: int) -> RandomWalk | PCT:
    """A strategy from its replay-file spec (``{"name": "pct", "depth": 3, "k": 40}``;
    ``"timers": true`` makes firing a timer a choice whenever timers are pending)."""
    timers = spec.get("timers") is True
    if spec["name"] == "random":
        return RandomWalk(seed, timers=timers)
    if spec["name"] == "pct":
        return PCT(seed, int(spec["depth"]), int(spec["k"]), timers=timers)
    raise ValueError(f"unknown strategy {spec['name']!r} (known: random, pct)")
