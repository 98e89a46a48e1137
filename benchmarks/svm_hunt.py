"""Hunt throughput of the secure-VM scenarios against the engine demo's.

For each svm scenario, the decisions per second of a random-walk hunt (the default
strategy, timers as choices, many schedules in one trio.run), beside the decisions per
second of the engine demo (lost-update: 3 actors, locked, 50 increments, tracing on)
measured in the same run, interleaved with the scenarios so that both see the same
machine, and their ratio. Target (issue 6): each ratio at least 0.5.
Also, for each, the actor switches per decision (measured apart, untimed): a decision that
hands the baton to another actor is a Trio task switch, the dearest part of a decision, so
this bounds the ratio (the engine demo's is printed last). And with ``--big``, the wall time
of one ``svm-boot -p vcpus=2000`` schedule.
Run: python benchmarks/svm_hunt.py [--seconds S] [--scenario NAME ...] [--big]
"""

from __future__ import annotations

import argparse
import itertools
import time

import emu
from emu.sim.controller import TIMER

SCENARIOS = ("svm-boot", "share-storm", "share-vs-pageout", "init-done-vs-share",
             "hotplug-during-esm", "dimm-hotplug", "svm-reboot", "abort-on-register-failure",
             "svm-off-vs-entry")


def rate(scenario: str, params: dict | None = None, *, seconds: float) -> tuple[float, int]:
    """Decisions per second over hunts of ``scenario`` for about ``seconds``."""
    steps = schedules = 0
    elapsed = 0.0
    while elapsed < seconds:
        start = time.perf_counter()
        h = emu.hunt(scenario, schedules=20, seed=schedules, params=params)
        elapsed += time.perf_counter() - start
        steps += h.steps_total
        schedules += h.schedules
        if not h.ok:
            raise SystemExit(f"{scenario}: a hunt found {h.found.violation}")
    return steps / elapsed, schedules


ENGINE = ("lost-update", {"locked": True, "increments": 50})


def engine_rate(seconds: float) -> float:
    return rate(*ENGINE, seconds=seconds)[0]


def switches(scenario: str, params: dict | None = None, schedules: int = 20) -> float:
    """Actor switches per decision over ``schedules`` schedules (timer steps aside: they
    switch no task)."""
    changes = decisions = 0

    def count(_: int, result: emu.RunResult) -> None:
        nonlocal changes, decisions
        actors = [a for _, a, _ in result.decisions if a != TIMER]
        changes += sum(a != b for a, b in itertools.pairwise(actors))
        decisions += len(actors)

    emu.hunt(scenario, schedules=schedules, params=params, progress=count)
    return changes / decisions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.5, help="time per measurement")
    ap.add_argument("--scenario", action="append", help="only these (repeatable)")
    ap.add_argument("--big", action="store_true", help="also one svm-boot -p vcpus=2000")
    args = ap.parse_args()
    engine_rate(0.3)  # warm-up
    print(f"{'scenario':<26} {'decisions/s':>12} {'engine/s':>10} {'ratio':>6} {'schedules':>9}"
          f" {'switches':>8}")
    ratios = []
    for sc in args.scenario or SCENARIOS:
        before = engine_rate(args.seconds / 2)
        svm, schedules = rate(sc, seconds=args.seconds)
        engine = (before + engine_rate(args.seconds / 2)) / 2
        ratios.append(svm / engine)
        print(f"{sc:<26} {svm:>12,.0f} {engine:>10,.0f} {svm / engine:>6.2f} {schedules:>9}"
              f" {switches(sc):>8.2f}")
    print(f"lowest ratio {min(ratios):.2f}, mean {sum(ratios) / len(ratios):.2f} (target 0.5); "
          f"the engine demo switches actors at {switches(*ENGINE):.2f} of its decisions")
    if args.big:
        start = time.perf_counter()
        r = emu.run("svm-boot", params={"vcpus": 2000})
        print(f"svm-boot -p vcpus=2000: {r.steps:,} steps in {time.perf_counter() - start:.1f} s"
              f" ({'clean' if r.ok else r.violation.kind})")


if __name__ == "__main__":
    main()
