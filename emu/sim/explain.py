"""Explain a failing schedule in kernel terms: the violation, the conflicting pair of steps
that decides it, the conflicting accesses to shared state, and the interleaving with one
column per actor.

The **deciding pair** comes from the access relation (``accesses``): the last two steps of
different actors, at or before the violation, that conflict on an object the violation is
about (an object named in its message: by its whole name, or by every hex number in the
name, so ``vmemmap:0x200`` is what "pfn 0x200" is about). A number counts by its kind: the
model says which words of a message number which objects (``numbered``: "GFN 0x1" is about
``gfn:1:0x1``, not about the host frame ``frame:normal:0x1``); a number after a word no
kind claims ("AT of 0x1000") may number any object. When the message names none of the
objects touched, it is the last conflicting pair involving the failing actor (or, for a
check at the end of the run, any actor). Either way a pair whose first step *writes* what
the second touches (the second observes it) comes before one where the first only reads
what the second writes (that order decides what the first saw, not the outcome of the
second). Only the last ``WINDOW`` steps are searched, not counting the failing actor's own
steps at the end (a livelock's spin: the pair that set it up comes before), and a step is
searched once for each actor and accesses it has (a spin repeats the same few). A
lock-order warning also carries lockdep's two-CPU table (``lockdep``), printed with it.

The model marks its entry points (an hcall, a ucall, a fault) with ``entry``: a detailed
re-run then names, for each step, the requests the entry points on the actor's stack serve,
decoded by the model from their arguments (the engine knows nothing of hypervisors).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from types import CodeType, FrameType
from typing import TYPE_CHECKING, Any, TypeVar

import attrs

from .accesses import conflicts

if TYPE_CHECKING:
    from .runner import RunResult

Describe = Callable[[Mapping[str, Any]], "str | None"]
"""Names the request an entry point serves, from its frame's locals (its arguments)."""
F = TypeVar("F", bound=Callable[..., Any])

_ENTRIES: dict[CodeType, Describe] = {}
"""Entry points by code object: a frame has no reference to its function, only its code."""


def entry(describe: Describe) -> Callable[[F], F]:
    """Mark a model function as an entry point: every step taken inside it serves the
    request ``describe(locals)`` names (``H_SVM_PAGE_IN(gfn=0x5, flags=0)``), shown by the
    timeline of a detailed re-run. The function is returned unchanged, so a hunt pays
    nothing; only a detailed re-run looks the marks up."""

    def mark(fn: F) -> F:
        _ENTRIES[fn.__code__] = describe
        return fn

    return mark


def requests(frames: Iterable[FrameType]) -> tuple[str, ...]:
    """What the entry points among ``frames`` (outermost first) serve, outermost first."""
    found = []
    for frame in frames:
        describe = _ENTRIES.get(frame.f_code)
        if describe is None:
            continue
        try:
            text = describe(frame.f_locals)
        except Exception as exc:  # a broken describer must not end the re-run it explains
            text = f"{frame.f_code.co_name}: {type(exc).__name__}: {exc}"
        if text:
            found.append(text)
    return tuple(found)


def lost_updates(result: RunResult) -> list[str]:
    """Writes based on a stale read: A read X, B then wrote X, A then wrote X over it."""
    names = result.trace.actors
    last_read: dict[tuple[str, int], tuple[int, object]] = {}
    last_write: dict[str, tuple[int, int, object]] = {}
    found = []
    for step, actor, kind, text, data in result.trace.events:
        if kind != "access":
            continue
        var, value = data
        if text == "read":
            last_read[(var, actor)] = (step, value)
            continue
        prev = last_write.get(var)
        read = last_read.get((var, actor))
        if prev is not None and read is not None and prev[1] != actor and read[0] < prev[0]:
            found.append(
                f"write-write conflict on {var}: {names[prev[1]]} wrote {var}={prev[2]} at step "
                f"{prev[0]}, after {names[actor]} had read {var}={read[1]} at step {read[0]}; "
                f"{names[actor]} then wrote {var}={value} at step {step}, losing that update")
        last_write[var] = (step, actor, value)
    return found


WINDOW = 2000
"""How many steps back from the violation the deciding pair is looked for."""

_HEX = re.compile(r"0x[0-9a-fA-F]+")
_WORD = re.compile(r"[A-Za-z][A-Za-z_-]*")

_NUMBERED: dict[str, set[str]] = {}
"""A word of a message (lower case) -> the words of the object names it numbers."""


def numbered(kind: str, *words: str) -> None:
    """The model says that in a violation message a number after one of ``words`` ("GFN",
    "pfn": any case) numbers objects whose name has the word ``kind`` ("gfn" in
    ``gfn:1:0x5``), and no others unless another call says so. Called once per kind, at
    import (a table, the same in every run)."""
    for word in words:
        _NUMBERED.setdefault(word.lower(), set()).add(kind.lower())


def _numbers(message: str) -> list[tuple[int, str]]:
    """Every hex number of ``message`` with the word just before it (lower case; "" if
    none), the words of other numbers skipped: "GFNs 0x1, 0x2" numbers both as GFNs."""
    found = []
    for hit in _HEX.finditer(message):
        before = _HEX.sub(" ", message[max(0, hit.start() - 16):hit.start()])
        words = _WORD.findall(before)
        found.append((int(hit.group(), 16), words[-1].lower() if words else ""))
    return found


def _counts(value: int, word: str, kinds: set[str]) -> bool:
    """Does the message's number ``value`` after ``word`` number an object whose name has
    the words ``kinds``?"""
    claimed = _NUMBERED.get(word)
    return claimed is None or not claimed.isdisjoint(kinds)


@attrs.frozen
class Pair:
    """Two conflicting steps of different actors, ``first`` before ``second``."""

    first: int
    second: int
    objects: tuple[str, ...]
    """The objects they conflict on, those the violation is about first, sorted."""
    about: bool
    """Whether ``objects[0]`` is an object the violation's message names."""


def named(message: str, names: Iterable[str]) -> list[str]:
    """The objects among ``names`` that ``message`` is about, sorted: named whole, or by
    every hex number in the object's name, each number of a kind the object is
    (``vmemmap:0x200`` by "pfn 0x200", ``gfn:1:0x1`` by "GFN 0x1" but not
    ``frame:normal:0x1``: see ``numbered``)."""
    numbers = _numbers(message)
    found = []
    for name in sorted(set(names)):
        hexes = {int(h, 16) for h in _HEX.findall(name)}
        kinds = {w.lower() for w in _WORD.findall(_HEX.sub(" ", name))}
        if (hexes and all(any(v == h and _counts(v, w, kinds) for v, w in numbers)
                          for h in hexes)) or re.search(
                rf"(?<![\w.]){re.escape(name)}(?![\w])", message):
            found.append(name)
    return found


def searched(result: RunResult) -> tuple[int, int, list[int]]:
    """Where pairs are looked for, as step indices: (start, end, the second steps to try,
    latest first, one per actor and accesses): the last ``WINDOW`` steps before the
    violation, not counting the failing actor's own steps at the end."""
    v, steps = result.violation, result.accesses or []
    actors = [name for _, name, _ in result.decisions]
    end = min(v.step if v else len(steps), len(steps), len(actors))
    own = end
    while own > 0 and v is not None and actors[own - 1] == v.actor:
        own -= 1
    start = max(own - WINDOW, 0)
    seconds, seen = [], set()
    for j in range(end - 1, start, -1):
        if (actors[j], steps[j]) not in seen:
            seen.add((actors[j], steps[j]))
            seconds.append(j)
    return start, end, seconds


def deciding_pair(result: RunResult) -> Pair | None:
    """The conflicting pair that decides ``result``'s violation (module docstring); None
    without a violation, recorded accesses, or any conflict between two actors."""
    v, steps = result.violation, result.accesses
    if v is None or not steps:
        return None
    actors = [name for _, name, _ in result.decisions]
    start, end, seconds = searched(result)
    touched = {n for s in steps[start:end] for n in s.reads | s.writes}
    about = set(named(v.message, touched))
    failing = v.actor if v.actor in actors[start:end] else None
    for wanted in ([about] if about else []) + [None]:
        for observed in (True, False):
            for j in seconds:
                for i in range(j - 1, start - 1, -1):
                    if actors[i] == actors[j] or (wanted is None and failing is not None
                                                  and failing not in (actors[i], actors[j])):
                        continue
                    if observed:  # the second step sees what the first wrote
                        a, b = steps[i], steps[j]
                        on = sorted(a.writes & (b.reads | b.writes))
                    else:
                        on = conflicts(steps[i], steps[j])
                    if wanted is not None:
                        on = [o for o in on if o in wanted]
                    if on:
                        ordered = sorted(on, key=lambda o: (o not in about, o))
                        return Pair(i + 1, j + 1, tuple(ordered), ordered[0] in about)
    return None


def step_text(result: RunResult, step: int, requests: Mapping[int, tuple[str, ...]]) -> str:
    """``step 5 cpu0 <requests>: <model function>: <operation>`` (what a detailed re-run
    knows; the operation alone otherwise)."""
    _, actor, op = result.decisions[step - 1]
    where = result.trace.where.get(step)
    served = " > ".join(requests.get(step, ()))
    return (f"step {step} {actor} " + (f"{served}: " if served else "")
            + (f"{where}: " if where else "") + op)


def pair_lines(result: RunResult, pair: Pair) -> list[str]:
    """The pair as two lines, each step with what it does to the objects (at most three)."""
    steps = result.accesses or []
    requests = result.trace.requests() if result.trace.where else {}
    shown = pair.objects[:3]
    more = f" and {len(pair.objects) - 3} more" if len(pair.objects) > 3 else ""

    def does(step: int) -> str:
        acc = steps[step - 1]
        return ", ".join(f"{'writes' if o in acc.writes else 'reads'} {o}" for o in shown) + more

    return [f"  {step_text(result, pair.first, requests)} ({does(pair.first)}) /",
            f"  {step_text(result, pair.second, requests)} ({does(pair.second)})"]


def pair_head(pair: Pair) -> str:
    """What the pair is, in one line."""
    which = (f"the last conflicting pair on {pair.objects[0]}, which the violation names"
             if pair.about else "the last conflicting pair of the failing actor (the "
             "violation names none of the objects touched)")
    return f"conflicting pair that decides the outcome ({which}):"


def explain(result: RunResult, last: int = 40) -> str:
    v = result.violation
    lines = [v.describe() if v else "no violation"]
    for other in result.violations:
        if other is not v:
            lines += ["", "also " + other.describe()]
    pair = deciding_pair(result)
    if pair is not None:
        lines += ["", pair_head(pair), *pair_lines(result, pair)]
    conflicts = lost_updates(result)
    if conflicts:
        lines += ["", "conflicting accesses:"] + [f"  {c}" for c in conflicts]
    if last > 0:
        how = ("; a cell: the requests served, outermost first, where they change, then the "
               "model function and the step's operation"
               if result.trace.where and any(result.trace.requests().values()) else "")
        lines += ["", f"interleaving (last {min(last, result.steps)} of {result.steps} steps"
                  f"{how}):", result.trace.timeline(last)]
    return "\n".join(lines)
