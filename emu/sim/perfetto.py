"""Export a trace as Perfetto / Chrome trace-event JSON (ui.perfetto.dev opens it).

One process per machine part (actor group) and one named thread track per actor; one
complete slice ("X") per granted step, named after the operation; a flow arrow from every
send to its receive; counters as "C" events; accesses and notes as thread instants; the
violation as a global instant. Timestamps are logical: step n starts at n microseconds, so a
replay writes the byte-identical file. Virtual time is in each slice's args. Counter tracks
computed outside the run (``--why``'s probability curve) come as ``counters``: name ->
[(logical time, value)], in a process of their own.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .files import write_atomic
from .trace import Trace

Counters = Mapping[str, Sequence[tuple[float, float]]]
"""Counter tracks computed outside the run: name -> [(logical time, value)]."""


def to_perfetto(trace: Trace, title: str = "emu", counters: Counters | None = None
                ) -> dict[str, Any]:
    groups = list(dict.fromkeys(trace.groups))
    pid = {g: i + 1 for i, g in enumerate(groups)}
    out: list[dict[str, Any]] = []
    for g in groups:
        out.append({"name": "process_name", "ph": "M", "pid": pid[g], "tid": 0,
                    "args": {"name": f"{title}: {g}"}})
    for i, (name, group) in enumerate(zip(trace.actors, trace.groups, strict=True)):
        out.append({"name": "thread_name", "ph": "M", "pid": pid[group], "tid": i + 1,
                    "args": {"name": name}})
        out.append({"name": "thread_sort_index", "ph": "M", "pid": pid[group], "tid": i + 1,
                    "args": {"sort_index": i}})

    def where(actor: int) -> dict[str, int]:
        if actor < 0:
            return {"pid": 1, "tid": 0}
        return {"pid": pid[trace.groups[actor]], "tid": actor + 1}

    for step, actor, kind, text, data in trace.events:
        ts = float(step)
        if kind == "step":
            out.append({"name": text, "cat": "step", "ph": "X", "ts": ts, "dur": 1.0,
                        **where(actor), "args": {"step": step, "virtual_time_ns": data}})
        elif kind in ("send", "recv"):
            flow = {"name": text, "cat": "message", "id": data[0], "ts": ts + 0.5, **where(actor),
                    "args": {"message": data[1]}}
            out.append({**flow, "ph": "s"} if kind == "send" else {**flow, "ph": "f", "bp": "e"})
        elif kind == "counter":
            out.append({"name": text, "cat": "counter", "ph": "C", "ts": ts,
                        "pid": where(actor)["pid"], "args": {text: data}})
        elif kind == "violation":
            out.append({"name": f"violation: {data}", "cat": "violation", "ph": "i", "s": "g",
                        "ts": ts + 0.5, **where(actor), "args": {"message": text}})
        else:
            args = {"value": data} if data is not None else {}
            out.append({"name": text if kind == "note" else f"{text} {data[0]}", "cat": kind,
                        "ph": "i", "s": "t", "ts": ts + 0.5, **where(actor), "args": args})
    if counters:
        extra = len(groups) + 1
        out.append({"name": "process_name", "ph": "M", "pid": extra, "tid": 0,
                    "args": {"name": f"{title}: analysis"}})
        for name, points in counters.items():
            out += [{"name": name, "cat": "analysis", "ph": "C", "ts": float(ts), "pid": extra,
                     "args": {name: value}} for ts, value in points]
    return {"traceEvents": out, "displayTimeUnit": "ns",
            "otherData": {"title": title, "trace_hash": trace.hash}}


def write_perfetto(trace: Trace, path: str | Path, title: str = "emu",
                   counters: Counters | None = None) -> Path:
    """Write the trace whole or not at all (see ``files.write_atomic``)."""
    return write_atomic(path, json.dumps(to_perfetto(trace, title, counters),
                                         separators=(",", ":")) + "\n")
