"""The structured trace of one schedule, its stable hash, and the text timeline.

Every event is a plain tuple ``(step, actor, kind, text, data)``:

| kind      | written by                      | text               | data                      |
|-----------|---------------------------------|--------------------|---------------------------|
| step      | the controller, once a decision | the operation      | virtual time (ns)         |
| access    | a shared variable               | ``read``/``write`` | ``[variable, value]``     |
| send/recv | a channel                       | the channel        | ``[flow id, message]``    |
| counter   | model code                      | counter name       | value                     |
| note      | model code or a primitive       | free text          | ``None`` or a JSON value  |
| violation | the controller                  | the message        | the violation kind        |

``actor`` is an index into ``Trace.actors`` (-1 for the controller). Only ints, strings
and lists go in, never object ids or wall-clock time, so the hash is a pure function of
the schedule and a replay produces the byte-identical Perfetto file.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

Event = tuple[int, int, str, str, Any]


def label(value: Any) -> Any:
    """A JSON-able, deterministic stand-in for a value that appears in the trace."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (tuple, list)):
        return [label(v) for v in value]
    trace_label = getattr(value, "trace_label", None)
    if trace_label is not None:
        return trace_label() if callable(trace_label) else trace_label
    return type(value).__name__


class Trace:
    def __init__(self) -> None:
        self.actors: list[str] = []
        self.groups: list[str] = []
        self.events: list[Event] = []
        self.where: dict[int, str] = {}
        """Step -> the model function it ran in (only when the controller records detail);
        not part of the hash, so a detailed re-run matches the original."""
        self.closed = False
        """Set when the schedule ends: actors unwinding afterwards leave no trace."""
        self._hash: str | None = None

    def add_actor(self, name: str, group: str) -> int:
        self.actors.append(name)
        self.groups.append(group)
        return len(self.actors) - 1

    def add(self, step: int, actor: int, kind: str, text: str, data: Any = None) -> None:
        if not self.closed:
            self.events.append((step, actor, kind, text, data))

    @property
    def hash(self) -> str:
        """A stable digest of the whole trace (actors and events)."""
        if self._hash is None:
            blob = json.dumps([self.actors, self.groups, self.events], separators=(",", ":"))
            self._hash = hashlib.sha256(blob.encode()).hexdigest()[:16]
        return self._hash

    def steps(self) -> list[Event]:
        return [e for e in self.events if e[2] == "step"]

    def timeline(self, last: int = 30, max_width: int = 44) -> str:
        """The last ``last`` steps (at least one), one row per step and one column per actor
        that acted in them; a step names the model function it ran in when known."""
        last = max(last, 1)
        rows: dict[int, list[str]] = {}
        order: list[int] = []
        for step, actor, kind, text, data in self.events:
            if kind == "step":
                rows[step] = [""] * len(self.actors)
                where = self.where.get(step)
                rows[step][actor] = f"{where}: {text}" if where else text
                order.append(step)
            elif step in rows and actor >= 0 and kind in ("access", "recv"):
                var, value = (text, data[1]) if kind == "recv" else data
                arrow = ":=" if text == "write" else "->"
                cell = rows[step][actor]
                rows[step][actor] = (f"{cell} {arrow} {value}" if var in cell
                                     else f"{cell}; {var} {arrow} {value}")
            elif step in rows and kind == "violation":
                rows[step].append(f"!! {data}")
        shown = order[-last:]
        n = len(self.actors)
        acting = [i for i in range(n) if any(rows[s][i] for s in shown)]
        if self.where:
            max_width = max(max_width, 72)
        widths = {i: min(max([len(self.actors[i])] + [len(rows[s][i]) for s in shown]),
                         max_width) + 2 for i in acting}

        def row(prefix: str, cells: list[str]) -> str:
            body = "".join(f"{cells[i][:widths[i] - 2]:<{widths[i]}}" for i in acting)
            return f"{prefix}{body}{' '.join(cells[n:])}".rstrip()

        head = row("step  ", self.actors)
        lines = [head, "-" * len(head)]
        if len(order) > len(shown):
            lines.append(f"  ... {len(order) - len(shown)} earlier steps")
        lines += [row(f"{s:>4}  ", rows[s]) for s in shown]
        return "\n".join(lines)
