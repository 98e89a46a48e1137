"""A hunt's structured event log (``emu hunt --log-json FILE``), for CI systems and long runs.

loguru's serialiser writes one JSON object a line, ``{"text": ..., "record": {...}}``; the
event is in ``record["extra"]``: its name under ``event`` and its fields. Only records bound
with an ``event`` go to the file, so it holds events only (``emu -v`` also shows them on
stderr). Events are logged by the process that runs the hunt's loop (the parent of
``--workers``), so one file has one writer.

| event   | when                                        | fields                                  |
|---------|---------------------------------------------|-----------------------------------------|
| batch   | every ``BATCH`` schedules of a hunt, and at | scenario, schedules (done so far),      |
|         | its end (``final``: true)                   | findings (saved so far), rate (per s)   |
| finding | a finding is on disk                        | scenario, seed, strategy, kind, fatal,  |
|         |                                             | message, replay, trace                  |

The rate is wall-clock statistics, as ``HuntResult.elapsed``: it never feeds a decision.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from loguru import logger

from .findings import Saved
from .runner import RunResult

BATCH = 100
"""Schedules between two ``batch`` lines."""


def _ours(record: Any) -> bool:
    return "event" in record["extra"]


def open_log(path: str | Path) -> int:
    """Start writing events to ``path`` (appended); the loguru handler's id, to close it."""
    return logger.add(path, serialize=True, filter=_ours, level="INFO")


def close_log(handler: int) -> None:
    logger.remove(handler)


class HuntEvents:
    """The events of one scenario's hunt."""

    def __init__(self, scenario: str) -> None:
        self.scenario = scenario
        self.findings = 0
        self.start = time.perf_counter()

    def schedule(self, done: int) -> None:
        """``done`` schedules have run: a batch line every ``BATCH``."""
        if done % BATCH == 0:
            self.batch(done, final=False)

    def batch(self, done: int, final: bool) -> None:
        elapsed = time.perf_counter() - self.start
        rate = round(done / elapsed, 1) if elapsed else 0.0
        logger.bind(event="batch", scenario=self.scenario, schedules=done,
                    findings=self.findings, rate=rate, final=final).info(
            "{}: {} schedules, {} finding(s), {} schedules/s", self.scenario, done,
            self.findings, rate)

    def finding(self, result: RunResult, saved: Saved) -> None:
        self.findings += 1
        v = result.violation
        assert v is not None  # (only a finding is saved)
        logger.bind(event="finding", scenario=result.scenario, seed=result.seed,
                    strategy=result.strategy["name"], kind=v.kind, fatal=v.fatal,
                    message=v.message, replay=str(saved.replay), trace=str(saved.trace)).info(
            "{} seed {}: {}", result.scenario, result.seed, v.kind)
