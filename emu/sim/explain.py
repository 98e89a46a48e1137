"""Explain a failing schedule in kernel terms: the violation, the conflicting accesses to
shared state, and the interleaving with one column per actor.

The model marks its entry points (an hcall, a ucall, a fault) with ``entry``: a detailed
re-run then names, for each step, the requests the entry points on the actor's stack serve,
decoded by the model from their arguments (the engine knows nothing of hypervisors).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from types import CodeType, FrameType
from typing import TYPE_CHECKING, Any, TypeVar

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


def explain(result: RunResult, last: int = 40) -> str:
    v = result.violation
    lines = [v.describe() if v else "no violation"]
    for other in result.violations:
        if other is not v:
            lines += ["", "also " + other.describe()]
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
