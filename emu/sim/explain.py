"""Explain a failing schedule in kernel terms: the violation, the conflicting accesses to
shared state, and the interleaving with one column per actor."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .runner import RunResult


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
        lines += ["", f"interleaving (last {min(last, result.steps)} of {result.steps} steps):",
                  result.trace.timeline(last)]
    return "\n".join(lines)
