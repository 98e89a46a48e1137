"""Engine throughput against the floor Trio sets.

Measures, in the same process and run:
  1. the engine: decisions per second of a 3-actor scenario (three workers doing locked
     increments of a shared counter, tracing on, many schedules in one trio.run);
  2. raw Trio: switches per second of a two-task ping-pong with trio.lowlevel.reschedule /
     wait_task_rescheduled (the cheapest hand-off Trio offers, and what baton passing uses).
Prints both and their ratio. Run: python benchmarks/engine.py [--seconds S]
"""

from __future__ import annotations

import argparse
import time

import trio
from trio.lowlevel import Abort, current_task, reschedule, wait_task_rescheduled

import emu


def engine_rate(seconds: float) -> tuple[float, int]:
    steps = schedules = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        h = emu.hunt("lost-update", schedules=50, seed=schedules,
                     params={"locked": True, "increments": 50})
        steps += h.steps_total
        schedules += h.schedules
    return steps / (time.perf_counter() - start), schedules


def trio_pingpong_rate(switches: int) -> float:
    def abort(_: object) -> Abort:
        return Abort.SUCCEEDED

    async def main() -> float:
        tasks: list = [None, None]
        finished = [False, False]
        count = 0

        async def player(me: int) -> None:
            nonlocal count
            tasks[me] = current_task()
            await wait_task_rescheduled(abort)
            while count < switches:
                count += 1
                reschedule(tasks[1 - me])
                await wait_task_rescheduled(abort)
            finished[me] = True
            if not finished[1 - me]:
                reschedule(tasks[1 - me])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(player, 0)
            nursery.start_soon(player, 1)
            while None in tasks:
                await trio.lowlevel.checkpoint()
            start = time.perf_counter()
            reschedule(tasks[0])
        return switches / (time.perf_counter() - start)

    return trio.run(main)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="time spent on the engine")
    args = ap.parse_args()
    trio_pingpong_rate(20_000)  # warm-up
    raw = trio_pingpong_rate(400_000)
    engine, schedules = engine_rate(args.seconds)
    raw_after = trio_pingpong_rate(400_000)
    raw = (raw + raw_after) / 2
    print(f"engine (lost-update, 3 actors, locked, 50 increments, tracing on): "
          f"{engine:,.0f} decisions/s over {schedules} schedules")
    print(f"raw Trio reschedule ping-pong (2 tasks):                          "
          f"{raw:,.0f} switches/s")
    print(f"ratio engine / raw Trio: {engine / raw:.2f}")


if __name__ == "__main__":
    main()
