"""Liveness: hot/cold monitors, and the repeating cycle of a livelock.

**Monitors** (Coyote's and P's hot states). Model code marks a situation that must end as
*hot* (``Machine.hot(monitor, key, why)``: a retry loop entered, an hcall issued, a VM put
in transition) and *cool* once it has ended (``Machine.cold(monitor, key)``). The key names
the situation (the vCPU, the VM, the GFN and its caller): going hot again while hot (one
more turn of a retry loop) keeps where it first went hot.

| event                                  | monitor state | what is reported              |
|----------------------------------------|---------------|-------------------------------|
| ``hot(monitor, key, why)``             | hot           | nothing                       |
| ``cold(monitor, key)``                 | cold          | nothing (also when not hot)   |
| every actor finished, a key still hot  | hot           | ``liveness``: "... never      |
|                                        |               | cooled", where it went hot    |
| step budget spent (fair continuation)  | hot           | ``liveness`` "no progress",   |
|                                        |               | naming the hot monitors (its  |
|                                        |               | why; the keys in the details) |

Neither call is a scheduling point, and neither touches the trace: a scenario's schedules
and trace hashes are the same with or without monitors. Nothing is kept until the first
``hot`` or a state fingerprint is offered (``Controller.monitors`` stays None).

**The cycle.** When a schedule runs out of steps under the fair continuation, each actor
that kept stepping is, in a livelock, going round a loop: its operations in the fair
suffix repeat with a period. ``find_cycle`` takes the shortest period of each actor's
(operation) sequence that covers the tail of the suffix, and shows one round of every
such actor, in the order the schedule last ran them, with how many times the round
repeated and since which step. A fair schedule interleaves the actors at random, so the
period is found per actor: the global sequence of (actor, operation) repeats only under a
lock-step schedule, and then the rounds found are the same.

**States.** A model that offers a cheap fingerprint of its state
(``Machine.state_fingerprint``) has it taken at every decision of the fair continuation
(never before: nothing is spent on a schedule that ends within its first half). The report
then says how many distinct states the fair suffix went through and when the last new one
appeared: a livelock keeps returning to the same few; a schedule still making progress,
which the budget merely cut short, keeps finding new ones.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from .controller import Controller

MAX_PERIOD = 256
"""The longest loop (in one actor's steps) looked for: a livelock's loop is a few steps."""

MIN_REPEATS = 3
"""A period counts only if it repeated at least this often."""


@attrs.define
class Hot:
    """A monitor's key that went hot: where (step, actor) and why."""

    monitor: str
    key: Hashable
    why: str
    step: int
    actor: str | None

    def describe(self) -> str:
        who = f", {self.actor}" if self.actor else ""
        why = f": {self.why}" if self.why else ""
        return f"{self.monitor} {self.key} (hot since step {self.step}{who}{why})"


class Monitors:
    """The hot keys of one schedule, in the order they went hot."""

    def __init__(self, ctl: Controller) -> None:
        self._ctl = ctl
        self.hot_keys: dict[tuple[str, Hashable], Hot] = {}
        self.fingerprint: Callable[[], Hashable] | None = None
        """The model's state fingerprint (``Machine.state_fingerprint``), if it offers one."""
        self.first_seen: dict[Hashable, int] = {}
        """Each fingerprint taken in the fair suffix (one a decision) -> the step about to
        be taken when it was first seen (distinct states only: a progressing schedule may
        have many)."""

    def hot(self, monitor: str, key: Hashable, why: str) -> None:
        if (monitor, key) in self.hot_keys:
            return
        actor = self._ctl.current
        self.hot_keys[monitor, key] = Hot(monitor, key, why, self._ctl.step,
                                          actor.name if actor is not None else None)

    def cold(self, monitor: str, key: Hashable) -> None:
        self.hot_keys.pop((monitor, key), None)

    def still_hot(self) -> list[Hot]:
        return list(self.hot_keys.values())

    def at_end(self) -> None:
        """Every actor has finished: a key still hot never cooled (a liveness violation)."""
        hot = self.still_hot()
        if not hot:
            return
        first = hot[0]
        more = f" (and {len(hot) - 1} more)" if len(hot) > 1 else ""
        self._ctl.fail("liveness", f"{first.monitor} {first.key} never cooled: hot since step "
                       f"{first.step}" + (f" ({first.actor})" if first.actor else "")
                       + (f": {first.why}" if first.why else "") + more,
                       details="\n".join("  hot at the end: " + h.describe() for h in hot))


class Fingerprinting:
    """The strategy of a fair suffix whose model offers a state fingerprint: it takes the
    fingerprint at every decision, then lets the strategy choose (everything else is the
    strategy's own)."""

    def __init__(self, strategy: Any, monitors: Monitors) -> None:
        self._strategy = strategy
        self._monitors = monitors

    def choose(self, enabled: list, ctl: Controller) -> Any:
        mon = self._monitors
        mon.first_seen.setdefault(mon.fingerprint(), ctl.step + 1)
        return self._strategy.choose(enabled, ctl)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._strategy, name)


def state_summary(monitors: Monitors, fair_from: int, step: int) -> str:
    """What the fair suffix's fingerprints say (it ran from ``fair_from`` to ``step``): how
    many distinct states, and when the last new one appeared."""
    last_new = max(monitors.first_seen.values())
    verdict = "none new in its second half: the cycle keeps returning to them" \
        if last_new <= (fair_from + step) // 2 else \
        "new ones still appearing: progress the budget cut short?"
    return (f"  model states in the fair suffix: {len(monitors.first_seen)} distinct over "
            f"{step - fair_from} decisions, the last new one at step {last_new} "
            f"({verdict})")


# ------------------------------------------------------------------------- the cycle
@attrs.frozen
class ActorLoop:
    """One actor's loop in the fair suffix: ``ops`` repeated ``repeats`` times since
    ``since``; ``steps`` are the global steps of its last round."""

    actor: str
    ops: tuple[str, ...]
    repeats: int
    since: int
    steps: tuple[int, ...]


@attrs.frozen
class Cycle:
    """The livelock's repeating cycle: one round of every looping actor."""

    loops: tuple[ActorLoop, ...]
    round: tuple[tuple[str, str], ...]
    """(actor, operation) of one round, in the order the schedule last ran them."""
    repeats: int
    since: int
    others: tuple[str, ...] = ()
    """Actors that stepped in the fair suffix without a repeating loop."""

    def describe(self) -> str:
        """One line: ``a: op -> b: op -> ... repeats N times from step S``."""
        return (" -> ".join(f"{actor}: {op}" for actor, op in self.round)
                + f" repeats {self.repeats} times from step {self.since}")

    def details(self) -> list[str]:
        lines = [f"  livelock cycle: {self.describe()}"]
        lines += [f"    {lp.actor}: {' -> '.join(lp.ops)} ({len(lp.ops)} steps, {lp.repeats} "
                  f"times from step {lp.since})" for lp in self.loops]
        if self.others:
            lines.append(f"    no repeating loop: {', '.join(self.others)}")
        return lines


def shortest_period(seq: list[str], max_period: int = MAX_PERIOD) -> tuple[int, int] | None:
    """(period, length of the periodic tail) of ``seq``: the shortest period p whose tail
    (``seq[i] == seq[i - p]`` back from the end) covers at least half of ``seq`` and
    ``MIN_REPEATS`` rounds; None if no period up to ``max_period`` does."""
    n = len(seq)
    for p in range(1, min(max_period, n // MIN_REPEATS) + 1):
        i = n - 1
        while i >= p and seq[i] == seq[i - p]:
            i -= 1
        tail = n - 1 - i + p  # the matching positions, plus the first round they repeat
        if tail >= max(MIN_REPEATS * p, n // 2):
            return p, tail
    return None


def find_cycle(events: list[tuple], names: list[str], fair_from: int,
               actors: set[int]) -> Cycle | None:
    """The repeating cycle of the fair suffix (steps after ``fair_from``) of a trace's
    ``events``, among the trace indices ``actors``; None if no actor there loops."""
    per: dict[int, list[tuple[int, str]]] = {}
    for step, actor, kind, op, _ in events:
        if kind == "step" and step > fair_from and actor in actors:
            per.setdefault(actor, []).append((step, op))
    loops, others = [], []
    for actor in sorted(per):
        steps = per[actor]
        found = shortest_period([op for _, op in steps])
        if found is None:
            others.append(names[actor])
            continue
        p, tail = found
        start = len(steps) - tail
        loops.append(ActorLoop(names[actor], tuple(op for _, op in steps[-p:]), tail // p,
                               steps[start][0], tuple(s for s, _ in steps[-p:])))
    if not loops:
        return None
    by_step = sorted((s, lp.actor, op) for lp in loops for s, op in zip(lp.steps, lp.ops,
                                                                        strict=True))
    return Cycle(tuple(loops), tuple((a, op) for _, a, op in by_step),
                 min(lp.repeats for lp in loops), max(lp.since for lp in loops), tuple(others))


def livelock(ctl: Controller, fair_from: int, live: set[int], message: str,
             lines: list[str]) -> tuple[str, str]:
    """The one-line message and the details of a "no progress" report (the fair suffix
    began after step ``fair_from``; ``live``: the trace indices of the actors still alive
    and the timer), with the hot monitors (the message names them: why the schedule could
    not finish) and the cycle."""
    hot = ctl.monitors.still_hot() if ctl.monitors is not None else []
    if hot:
        # the monitors by name (how many keys): the keys, which may number objects, stay
        # in the details, so the message's objects (``explain``) are the livelock's own
        keys = Counter(h.monitor for h in hot)
        message += "; still hot: " + ", ".join(
            name + (f" (x{n})" if n > 1 else "") for name, n in keys.items())
        lines = [*lines, *("  hot: " + h.describe() for h in hot)]
    cycle = find_cycle(ctl.trace.events, ctl.trace.actors, fair_from, live)
    if cycle is not None:
        lines = [*lines, *cycle.details()]
    if ctl.monitors is not None and ctl.monitors.first_seen:
        lines.append(state_summary(ctl.monitors, fair_from, ctl.step))
    return message, "\n".join(lines)
