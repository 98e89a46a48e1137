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

A detailed re-run (``Controller.detail``) also fills ``where`` and ``received``, outside the
events and the hash: where in the model each step ran and what its server received, from
which ``requests`` follows each request across actors along the messages' flows.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from ..errors import EmuError

Event = tuple[int, int, str, str, Any]

DETAIL_WIDTH = 56
"""The width a detailed timeline wraps its cells to (at least)."""


class Where(str):
    """Where in the model a step was taken: the innermost model function with its plain
    arguments and its caller (the string), and ``requests``, what the entry points on the
    actor's stack serve (``explain.entry``), outermost first."""

    requests: tuple[str, ...]

    def __new__(cls, text: str, requests: tuple[str, ...] = ()) -> Where:
        where = super().__new__(cls, text)
        where.requests = requests
        return where


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
        self.where: dict[int, Where] = {}
        """Step -> where in the model it ran (only when the controller records detail);
        not part of the hash, so a detailed re-run matches the original."""
        self.received: dict[int, str] = {}
        """Step -> the message its actor received, as the model names it
        (``Machine.describe_received``; detail only, not hashed either)."""
        self.closed = False
        """Set when the schedule ends: actors unwinding afterwards leave no trace."""
        self._hash: str | None = None
        self.summarised = False
        """Set on a summary (``summary``): no events, and a hash only if it was kept."""

    def add_actor(self, name: str, group: str) -> int:
        self.actors.append(name)
        self.groups.append(group)
        return len(self.actors) - 1

    def add(self, step: int, actor: int, kind: str, text: str, data: Any = None) -> None:
        if not self.closed:
            self.events.append((step, actor, kind, text, data))

    def summary(self, hashed: bool) -> Trace:
        """This trace without its events (what a clean schedule's result carries back from
        a hunt worker: the parent counts its actors), with its hash if ``hashed``."""
        short = Trace()
        short.actors, short.groups, short.closed = self.actors, self.groups, True
        short.summarised = True
        if hashed:
            short._hash = self.hash
        return short

    @property
    def hash(self) -> str:
        """A stable digest of the whole trace (actors and events)."""
        if self._hash is None and self.summarised:
            raise EmuError("this trace was summarised by a hunt worker without its hash "
                           "(hunt(..., hashes=True) keeps it)")
        if self._hash is None:
            blob = json.dumps([self.actors, self.groups, self.events], separators=(",", ":"))
            self._hash = hashlib.sha256(blob.encode()).hexdigest()[:16]
        return self._hash

    def steps(self) -> list[Event]:
        return [e for e in self.events if e[2] == "step"]

    def timeline(self, last: int = 30, max_width: int = 44) -> str:
        """The last ``last`` steps (at least one), one row per step and one column per actor
        that acted in them. A cell is the step's operation, cut at ``max_width``; after a
        detailed re-run (``where``) it is wrapped at ``max(max_width, DETAIL_WIDTH)`` and
        reads: the requests the step serves, then the model function and the operation."""
        last = max(last, 1)
        n = len(self.actors)
        rows: dict[int, list[str]] = {}
        order: list[int] = []
        for step, actor, kind, text, data in self.events:
            if kind == "step":
                rows[step] = [""] * n
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
        acting = [i for i in range(n) if any(rows[s][i] for s in shown)]
        served = self._served(shown) if self.where else {}
        cells = {s: self._cells(rows[s], served.get(s, ()), acting, max_width) for s in shown}
        width = max(max_width, DETAIL_WIDTH) if self.where else max_width
        widths = {i: min(max([len(self.actors[i])] + [len(line) for s in shown
                                                      for line in cells[s][i]]), width) + 2
                  for i in acting}

        def row(prefix: str, texts: dict[int, str], marks: list[str]) -> str:
            body = "".join(f"{texts.get(i, '')[:widths[i] - 2]:<{widths[i]}}" for i in acting)
            return f"{prefix}{body}{' '.join(marks)}".rstrip()

        head = row("step  ", dict(enumerate(self.actors)), [])
        lines = [head, "-" * len(head)]
        if len(order) > len(shown):
            lines.append(f"  ... {len(order) - len(shown)} earlier steps")
        for s in shown:
            height = max(len(cells[s][i]) for i in acting)
            for k in range(height):
                texts = {i: cells[s][i][k] for i in acting if k < len(cells[s][i])}
                lines.append(row(f"{s:>4}  " if k == 0 else " " * 6, texts,
                                 rows[s][n:] if k == 0 else []))
        return "\n".join(lines)

    def _cells(self, row: list[str], served: tuple[str, ...], acting: list[int],
               max_width: int) -> dict[int, list[str]]:
        """The lines of each acting actor's cell in a row: the text as it is, or after a
        detailed re-run the requests served (``served``), then the text, wrapped."""
        if not self.where:
            return {i: [row[i]] for i in acting}
        width = max(max_width, DETAIL_WIDTH)
        return {i: (_wrap(" > ".join(served), width) if served and row[i] else [])
                + (_wrap(row[i], width) if row[i] else []) for i in acting}

    def _served(self, shown: list[int]) -> dict[int, tuple[str, ...]]:
        """The requests to show in each of the ``shown`` steps: those it serves, where they
        differ from those of its actor's previous step shown (a column says them once)."""
        requests = self.requests()
        actor = {e[0]: e[1] for e in self.events if e[2] == "step"}
        last: dict[int, tuple[str, ...]] = {}
        served = {}
        for s in shown:
            now = requests.get(s, ())
            if now != last.get(actor[s]):
                served[s] = last[actor[s]] = now
        return served

    def requests(self) -> dict[int, tuple[str, ...]]:
        """Step -> the requests it serves, outermost first (after a detailed re-run): those
        its actor received a message for (the requests of the step that sent it, then the
        message, as ``received`` names it or by its label), then those the entry points on
        its stack serve (``Where.requests``). A server serves what it received until it
        receives again."""
        serving: dict[int, tuple[str, ...]] = {}  # actor -> since its last receive
        flows: dict[int, tuple[str, ...]] = {}  # message in flight -> its sender's requests
        found: dict[int, tuple[str, ...]] = {}
        for step, actor, kind, _, data in self.events:
            own = getattr(self.where.get(step), "requests", ())
            if kind == "step":
                found[step] = serving.get(actor, ()) + own
            elif kind == "recv" and actor >= 0:
                message = self.received.get(step) or str(data[1])
                serving[actor] = (*flows.pop(data[0], ()), message)
                found[step] = serving[actor] + own
            elif kind == "send" and actor >= 0:
                flows[data[0]] = found.get(step, ())
        return found


_BREAKS = (" > ", ": ", " < ", ", ", " ", "(")
"""Where a cell's line may break, best first: between requests, before the operation,
before the caller, between arguments, anywhere there is a space, after a parenthesis."""


def _wrap(text: str, width: int) -> list[str]:
    """``text`` in lines of at most ``width``, each broken at the best place (``_BREAKS``)
    that leaves it at least a third full; the lines after the first are indented."""
    lines = []
    while len(text) > width:
        for sep in _BREAKS:
            keep = len(sep.rstrip())  # the separator's mark stays at the end of the line
            cut = text.rfind(sep, 0, width + 1 - keep) + keep
            if cut >= max(width // 3, keep + 3):
                break
        else:
            cut = width
        lines.append(text[:cut].rstrip())
        text = "  " + text[cut:].lstrip()
    return [*lines, text]
