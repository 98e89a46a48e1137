"""Where a hunt's findings go: each one on disk the moment it is found.

``FindingLog.save`` writes a violating schedule's replay file and Perfetto trace atomically
and then appends one line to ``findings.jsonl`` in the output directory, all *before* the
finding is announced, so a hunt killed at any point has lost nothing it reported. Names
carry the scenario (for ``file.py:function`` the file's stem and the function) and the
seed, so findings never overwrite each other.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import attrs

from . import replay as replay_file
from .files import append_line, check_dir
from .perfetto import write_perfetto
from .runner import RunResult

INDEX = "findings.jsonl"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_.") or "scenario"


def stem(result: RunResult) -> str:
    """``share-vs-pageout-seed37``; ``mine-race-seed3`` for ``path/to/mine.py:race``."""
    path, sep, func = result.scenario.rpartition(":")
    name = f"{Path(path).stem}-{func}" if sep and path.endswith(".py") else result.scenario
    if result.strategy.get("name") == "explore":  # (not to overwrite a hunt's finding)
        name += f"-explore-k{result.strategy['preemptions']}"
        if "schedule" in result.strategy:  # (a portfolio's bounded search: its n-th at k)
            name += f"-{result.strategy['schedule']}"
    return f"{_slug(name)}-seed{result.seed}"


@attrs.frozen
class Saved:
    replay: Path
    trace: Path


class FindingLog:
    def __init__(self, out: str | Path) -> None:
        self.out = check_dir(out, "--out")
        self.index = self.out / INDEX
        self.saved: dict[str, Saved] = {}
        """By file stem (a portfolio's bounded search runs every schedule with one seed)."""

    def save(self, result: RunResult) -> Saved:
        base = self.out / stem(result)
        saved = Saved(replay_file.save(base.with_name(base.name + ".replay.json"), result),
                      write_perfetto(result.trace, base.with_name(base.name + ".trace.json"),
                                     result.scenario))
        v = result.violation
        append_line(self.index, json.dumps({
            "scenario": result.scenario, "seed": result.seed, "strategy": result.strategy,
            "kind": v.kind if v else None, "fatal": v.fatal if v else None,
            "message": v.message if v else None, "step": v.step if v else None,
            "trace_hash": result.trace_hash, "replay": str(saved.replay),
            "trace": str(saved.trace)}))
        self.saved[stem(result)] = saved
        return saved

    def get(self, result: RunResult) -> Saved | None:
        return self.saved.get(stem(result))
