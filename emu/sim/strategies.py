"""Strategies: which enabled actor takes the next step.

- ``RandomWalk``: uniform among the enabled actors, from a seeded RNG.
- ``PCT`` (Burckhardt et al., ASPLOS 2010): distinct random priorities, d-1 change points in
  [1, k]; always run the highest-priority enabled actor; at the i-th change point the actor
  that just ran drops below every other. One run finds a bug of depth d with probability at
  least 1/(n * k^(d-1)).
- ``Replay``: follow a recorded decision list, and say exactly where it stops fitting.

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
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def spec(self) -> dict[str, Any]:
        return {"name": "random"}

    def choose(self, enabled: list[Actor], ctl: Controller) -> Actor:
        if len(enabled) == 1:
            return enabled[0]
        return enabled[self.rng.randrange(len(enabled))]


class PCT:
    def __init__(self, seed: int, depth: int, k: int) -> None:
        if depth < 1:
            raise ValueError("PCT depth must be at least 1")
        self.rng = random.Random(seed)
        self.depth = depth
        self.k = max(k, 1)
        points = range(1, self.k + 1)
        self.change_points = sorted(self.rng.sample(points, min(depth - 1, len(points))))
        self._next_change = 0
        self.priority: list[float] = []

    def spec(self) -> dict[str, Any]:
        return {"name": "pct", "depth": self.depth, "k": self.k}

    def choose(self, enabled: list[Actor], ctl: Controller) -> Actor:
        if not self.priority:
            ranks = list(range(self.depth, self.depth + len(ctl.actors)))
            self.rng.shuffle(ranks)
            self.priority = [float(r) for r in ranks]
        while (self._next_change < len(self.change_points)
               and ctl.step >= self.change_points[self._next_change]):
            if ctl.current is not None:
                self.priority[ctl.current.index] = self.depth - 1 - self._next_change
            self._next_change += 1
        return max(enabled, key=lambda a: self.priority[a.index])


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


def make_strategy(spec: dict[str, Any], seed: int) -> RandomWalk | PCT:
    """A strategy from its replay-file spec (``{"name": "pct", "depth": 3, "k": 40}``)."""
    if spec["name"] == "random":
        return RandomWalk(seed)
    if spec["name"] == "pct":
        return PCT(seed, int(spec["depth"]), int(spec["k"]))
    raise ValueError(f"unknown strategy {spec['name']!r} (known: random, pct)")
