"""Explain a failing schedule in kernel terms: the violation, the conflicting pair of steps
that decides it, the conflicting accesses to shared state, and the interleaving with one
column per actor.

The **deciding pair** comes from the access relation (``accesses``): the last two steps of
different actors, at or before the violation, that conflict on an object the violation is
about. Those objects are the ones its check named (``violations.About``: the stable names
the check knew, the most robust way), else those its message names: by its whole name, or
by every hex number in the name, so ``vmemmap:0x200`` is what "pfn 0x200" is about. A
number counts by its kind: the model says which words of a message number which objects
(``numbered``: "GFN 0x1" is about ``gfn:1:0x1``, not about the host frame
``frame:normal:0x1``); a number after a word no kind claims ("AT of 0x1000") may number
any object; a call's positional arguments ("UV_ESM(0x0, 0x8)") number none. A pair with
the failing actor comes first. When only one actor touches those objects (a CPU's TLB
entry: the violation is about a stale copy), the pair is the step that last wrote the copy
against the last later step of another actor that changed what it was copied from. When
the violation is about no object touched, it is the last conflicting pair involving the
failing actor (or, for a check at the end of the run, any actor) on the model's state:
the channels and completions that hand control from one actor to another (``plumbing``)
only when nothing else conflicts; the checks' own bookkeeping (``accesses.CHECK``) never.
Either way a pair whose first step *writes* what the second touches (the second observes
it) comes before one where the first only reads what the second writes (that order
decides what the first saw, not the outcome of the second). Only the last ``WINDOW`` steps
are searched, not counting the failing actor's own steps at the end (a livelock's spin:
the pair that set it up comes before), and a step is searched once for each actor and
accesses it has (a spin repeats the same few). A lock-order warning also carries lockdep's
two-CPU table (``lockdep``), printed with it.

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

from ..errors import EmuError
from .accesses import CHECK, conflicts

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
_CALL = re.compile(r"\b[A-Za-z_]\w*\([^()]*\)")
_POSITIONAL = re.compile(r"(?<![=\w])0x[0-9a-fA-F]+")
"""A call's argument not introduced by ``name=``."""
_HAND_OVER = ("send ", "recv ", "wait_for_completion ")
"""The operation labels of a channel's and a completion's steps (``channel``)."""
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
    """Whether ``objects[0]`` is an object the violation is about (``about``)."""
    via: str = ""
    """When the violation is about a copy (a TLB entry) that only ``first``'s actor
    touches: the copy, which step ``first`` wrote from the ``objects`` step ``second``
    then changed."""


def named(message: str, names: Iterable[str]) -> list[str]:
    """The objects among ``names`` that ``message`` is about, sorted: named whole, or by
    every hex number in the object's name, each number of a kind the object is
    (``vmemmap:0x200`` by "pfn 0x200", ``gfn:1:0x1`` by "GFN 0x1" but not
    ``frame:normal:0x1``: see ``numbered``). A call's positional arguments
    ("UV_ESM(0x0, 0x8)") number nothing: which objects they stand for is the callee's."""
    numbers = _numbers(_CALL.sub(lambda c: _POSITIONAL.sub(" ", c.group()), message))
    found = []
    for name in sorted(set(names)):
        hexes = {int(h, 16) for h in _HEX.findall(name)}
        kinds = {w.lower() for w in _WORD.findall(_HEX.sub(" ", name))}
        if (hexes and all(any(v == h and _counts(v, w, kinds) for v, w in numbers)
                          for h in hexes)) or re.search(
                rf"(?<![\w.]){re.escape(name)}(?![\w])", message):
            found.append(name)
    return found


def plumbing(result: RunResult) -> set[str]:
    """The channels and completions the schedule waited on, sent or received through:
    they hand control from one actor to another (a request to its server, a CPU's "done"),
    so they order the steps around any race without being what it is about. Named by the
    operation labels of ``channel`` (the engine's own)."""
    return {op.partition(" ")[2] for _, _, op in result.decisions
            if op.startswith(_HAND_OVER)}


def about(result: RunResult, touched: Iterable[str]) -> set[str]:
    """The objects among ``touched`` that ``result``'s violation is about: those its check
    named (``violations.About``), else those its message names (``named``) but for the
    channels and completions (``plumbing``: "pcpu1" in a message is the CPU, not its
    mailbox); never the checks' own bookkeeping (``accesses.CHECK``)."""
    v = result.violation
    if v is None:
        return set()
    touched = set(touched)
    found = (set(v.objects) & touched if v.objects
             else set(named(v.message, touched)) - plumbing(result))
    return {o for o in found if not o.startswith(CHECK)}


def searched(result: RunResult) -> tuple[int, int, list[int]]:
    """Where pairs are looked for, as step indices: (start, end, the second steps to try,
    latest first, one per actor and accesses): the last ``WINDOW`` steps before the
    violation, not counting the failing actor's own steps at the end."""
    v, steps = result.violation, result.accesses or []
    actors = [name for _, name, _ in result.decisions]
    end = min(v.step if v else len(steps), len(steps), len(actors))
    if v is not None and v.at is not None:  # the cause was decided there (``About.at``)
        end = min(end, v.at)
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
    named_ = about(result, touched)
    model = {o for o in touched if not o.startswith(CHECK)}
    state = model - plumbing(result)
    failing = v.actor if v.actor in actors[start:end] else None

    def last(objects: set[str], who: str | None, after: int = -1) -> Pair | None:
        """The last pair on ``objects``, one of its steps ``who``'s (None: any actor's), the
        first at index ``after`` (-1: any); observed pairs first."""
        for observed in (True, False):
            for j in seconds:
                for i in [after] if after >= 0 else range(j - 1, start - 1, -1):
                    if actors[i] == actors[j] or j <= i or (
                            who is not None and who not in (actors[i], actors[j])):
                        continue
                    if observed:  # the second step sees what the first wrote
                        a, b = steps[i], steps[j]
                        on = sorted(a.writes & (b.reads | b.writes) & objects)
                    else:
                        on = [o for o in conflicts(steps[i], steps[j]) if o in objects]
                    if on:
                        ordered = sorted(on, key=lambda o: (o not in named_, o))
                        return Pair(i + 1, j + 1, tuple(ordered), ordered[0] in named_)
        return None

    whom = (failing, None) if failing is not None else (None,)
    for who in whom:
        if named_ and (pair := last(named_, who)):
            return pair
    if named_:  # one actor's copy, gone stale: the copy against the change of its source
        copy = next((i for i in range(end - 1, start - 1, -1)
                     if not steps[i].writes.isdisjoint(named_)), None)
        if copy is not None:
            via = sorted(steps[copy].writes & named_)[0]
            for who in whom:
                if pair := last(state, who, copy):
                    return attrs.evolve(pair, via=via)
    # the model's state before the channels and completions that order every step
    for objects in (state, model):
        if pair := last(objects, failing):
            return pair
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
    which = (f"the last conflicting pair on {pair.objects[0]}, which the violation is about"
             if pair.about else
             f"the copy {pair.via} the violation is about, taken from {pair.objects[0]}, "
             "against the last change of its source" if pair.via else
             "the last conflicting pair of the failing actor (the violation names none of "
             "the objects touched)")
    return f"conflicting pair that decides the outcome ({which}):"


def explained(result: RunResult, last: int = 40) -> str:
    """``explain`` of ``result`` with its interleaving in kernel terms: when the result
    lacks them, from a re-run that records the model function of every step and the
    accesses (``runner.detailed``; hunting itself never pays for that). A re-run that
    diverges is itself worth a line, and the plain timeline follows."""
    note = ""
    if (last > 0 and not result.trace.where) or result.accesses is None:
        from .runner import detailed  # (here: the model imports this module, not the runner)
        try:
            result = detailed(result)
        except EmuError as exc:
            note = f"note: the detailed re-run failed ({exc}); plain timeline below\n"
    return note + explain(result, last)


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
